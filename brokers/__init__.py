"""Transports: the bus contract, Kafka and in-memory buses, MQTT on asyncio."""
