"""MQTT -> Kafka bridge.

Subscribes to the uplink topics through an MQTT 5 shared subscription (so
several bridges split the load), wraps each PUBLISH in an envelope keyed by
device id, produces it to the raw topic, and only then sends the PUBACK.
A bridge that dies between the two loses nothing: the broker redelivers
what was never acknowledged.
"""

from __future__ import annotations

import asyncio
import logging

from brokers.base import Producer
from brokers.exceptions import BrokerError
from brokers.mqtt import InboundMessage, MqttClient
from citysense.metrics import Metrics
from citysense.records import Envelope, encode
from ingest.topics import UPLINK_FILTER, parse_uplink_topic

log = logging.getLogger(__name__)


def envelope_record(message: InboundMessage) -> tuple[bytes, bytes]:
    parsed = parse_uplink_topic(message.topic)
    device_id = parsed[1] if parsed else ""
    envelope = Envelope(message.topic, device_id, message.received_ns, message.payload)
    return device_id.encode(), encode(envelope)


class Bridge:
    def __init__(
        self,
        mqtt: MqttClient,
        producer: Producer,
        raw_topic: str,
        *,
        share_group: str = "citysense-bridge",
        max_batch: int = 2000,
        retry_backoff_s: float = 0.5,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics
        self._mqtt = mqtt
        self._producer = producer
        self._raw_topic = raw_topic
        self._subscription = f"$share/{share_group}/{UPLINK_FILTER}"
        self._max_batch = max_batch
        self._retry_backoff_s = retry_backoff_s
        self._stopping = asyncio.Event()
        self.ready = asyncio.Event()  # set once subscribed: nothing published after is missed
        self.forwarded = 0

    def request_stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        await self._producer.start()
        await self._mqtt.start()
        try:
            await self._mqtt.subscribe(self._subscription, qos=1)
            self.ready.set()
            while not self._stopping.is_set():
                batch = await self._mqtt.receive_batch(self._max_batch, timeout_s=0.2)
                if batch:
                    await self._forward(batch)
        finally:
            await self._mqtt.stop()  # unacknowledged messages stay with the broker
            await self._producer.stop()

    async def _forward(self, batch: list[InboundMessage]) -> None:
        records = [envelope_record(m) for m in batch]
        while True:
            try:
                await self._producer.send_batch(self._raw_topic, records)
                break
            except BrokerError as exc:
                if not exc.retriable or self._stopping.is_set():
                    raise
                log.warning("raw topic produce failed, retrying: %s", exc)
                if self._metrics is not None:
                    self._metrics.retries.labels("bridge").inc()
                await asyncio.sleep(self._retry_backoff_s)
        self._mqtt.ack(batch)
        self.forwarded += len(batch)
        if self._metrics is not None:
            self._metrics.records.labels("bridge", "forwarded").inc(len(batch))
