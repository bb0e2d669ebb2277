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
import time

from brokers.base import Producer
from brokers.exceptions import BrokerError
from brokers.mqtt import InboundMessage, MqttClient
from citysense.metrics import Metrics
from citysense.records import DeadLetter, Envelope, encode
from ingest.codecs.base import OVERSIZE
from ingest.dlq import MAX_ORIGINAL_BYTES
from ingest.topics import UPLINK_FILTER, parse_uplink_topic

log = logging.getLogger(__name__)


def envelope_record(message: InboundMessage) -> tuple[bytes, bytes]:
    parsed = parse_uplink_topic(message.topic)
    device_id = parsed[1] if parsed else ""
    envelope = Envelope(message.topic, device_id, message.received_ns, message.payload)
    return device_id.encode(), encode(envelope)


def oversize_letter(message: InboundMessage, device_id: str, size: int) -> DeadLetter:
    head = message.payload[:MAX_ORIGINAL_BYTES]
    return DeadLetter(
        OVERSIZE, f"envelope of {size} bytes is over the bridge's limit (payload cut to {len(head)})",
        "bridge", message.topic, -1, -1, head, device_id, time.time_ns(),
    )


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
        dlq_topic: str = "citysense.dlq.v1",
        max_envelope_bytes: int = 900_000,
    ) -> None:
        self._dlq_topic = dlq_topic
        self._max_envelope_bytes = max_envelope_bytes
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
        self.dead_letters = 0

    def request_stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        await self._producer.start()
        await self._mqtt.start()
        try:
            await self._mqtt.subscribe(self._subscription, qos=1)
            self.ready.set()
            log.info("subscribed to %s", self._subscription)
            while not self._stopping.is_set():
                batch = await self._mqtt.receive_batch(self._max_batch, timeout_s=0.2)
                if batch:
                    await self._forward(batch)
        finally:
            await self._mqtt.stop()  # unacknowledged messages stay with the broker
            await self._producer.stop()

    async def _forward(self, batch: list[InboundMessage]) -> None:
        records: list[tuple[bytes, bytes]] = []
        dead: list[tuple[bytes, bytes]] = []
        for m in batch:
            key, value = envelope_record(m)
            if len(value) > self._max_envelope_bytes:
                # Kafka would refuse it, the bridge would never acknowledge it, and the session
                # would hand it back after every restart: dead-letter it and move on.
                dead.append((key, encode(oversize_letter(m, key.decode(), len(value)))))
            else:
                records.append((key, value))
        while True:
            try:
                await asyncio.gather(
                    *([self._producer.send_batch(self._raw_topic, records)] if records else []),
                    *([self._producer.send_batch(self._dlq_topic, dead)] if dead else []),
                )
                break
            except BrokerError as exc:
                if not exc.retriable or self._stopping.is_set():
                    raise
                log.warning("raw topic produce failed, retrying: %s", exc)
                if self._metrics is not None:
                    self._metrics.retries.labels("bridge").inc()
                await asyncio.sleep(self._retry_backoff_s)
        self._mqtt.ack(batch)
        self.forwarded += len(records)
        self.dead_letters += len(dead)
        if self._metrics is not None:
            mx = self._metrics
            mx.records.labels("bridge", "forwarded").inc(len(records))
            mx.messages.labels("bridge", UPLINK_FILTER, "received").inc(len(batch))
            mx.messages.labels("bridge", self._raw_topic, "produced").inc(len(records))
            mx.batch_records.labels("bridge").observe(len(batch))
            if dead:
                mx.dead_letters.labels("bridge", OVERSIZE).inc(len(dead))
                mx.messages.labels("bridge", self._dlq_topic, "produced").inc(len(dead))
