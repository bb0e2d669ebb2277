"""Ingest: MQTT->Kafka bridge, per-profile codecs, normaliser, dead letters."""
