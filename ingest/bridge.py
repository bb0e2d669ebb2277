"""MQTT -> Kafka bridge.

Subscribes to the uplink topics through an MQTT 5 shared subscription (so
several bridges split the load), wraps each PUBLISH in an envelope keyed by
device id, produces it to the raw topic, and only then sends the PUBACK.
A bridge that dies between the two loses nothing: the broker redelivers
what was never acknowledged. Beside the uplinks the bridge runs a canary through
its shared subscription (``ingest/canary.py``) to notice another consumer in its
group, and logs and counts every change of its MQTT connection.

It also follows the broker's ``$SYS`` drop counter (``broker_stats``), the
one trace of uplinks the broker acknowledged and then dropped from a full
bridge queue.
"""

from __future__ import annotations

import asyncio
import logging
import time

from brokers.base import Producer
from brokers.exceptions import BrokerError
from brokers.mqtt_base import InboundMessage, MqttClientApi
from citysense.metrics import Metrics
from citysense.records import DeadLetter, Envelope, encode
from ingest.broker_stats import SYS_TOPICS, BrokerStats
from ingest.canary import CanaryWatch, canary_origin, canary_topic, echo_topic
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
        mqtt: MqttClientApi,
        producer: Producer,
        raw_topic: str,
        *,
        share_group: str = "citysense-bridge",
        max_batch: int = 2000,
        retry_backoff_s: float = 0.5,
        metrics: Metrics | None = None,
        dlq_topic: str = "citysense.dlq.v1",
        max_envelope_bytes: int = 900_000,
        canary_interval_s: float = 5.0,
        canary_timeout_s: float = 60.0,
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
        self.broker_stats = BrokerStats()
        if metrics is not None:
            metrics.registry.register(self.broker_stats)
        mqtt.on_side_messages("$SYS/#", self.broker_stats.update)
        self._share_group = share_group
        client_id = mqtt.config.client_id
        self._echo_topic = echo_topic(client_id)
        self._canary_topic = canary_topic(client_id)
        self._canary_interval_s = canary_interval_s
        self._next_canary = 0.0
        self.canary = CanaryWatch(share_group, canary_timeout_s)
        self.canaries_lost = 0
        mqtt.set_connection_listener(self._connection_changed)

    def _connection_changed(self, event: str, code: int, reason: str) -> None:
        # paho's thread or the event loop (by client); prometheus_client is thread-safe. The client
        # logs the change itself.
        if self._metrics is not None:
            self._metrics.mqtt_connection_changes.labels("bridge", event, reason).inc()
            self._metrics.mqtt_connected.labels("bridge").set(1 if event == "connected" else 0)

    def request_stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        await self._producer.start()
        await self._mqtt.start()
        try:
            await self._mqtt.subscribe(self._subscription, qos=1)
            await self._follow_broker_stats()
            if self._canary_interval_s:
                await self._mqtt.subscribe(self._echo_topic, qos=1)
            self.ready.set()
            log.info("subscribed to %s", self._subscription)
            while not self._stopping.is_set():
                batch = await self._mqtt.receive_batch(self._max_batch, timeout_s=0.2)
                if batch:
                    await self._forward(self._take_canaries(batch))
                if self._canary_interval_s:
                    self._canary_tick()
        finally:
            await self._mqtt.stop()  # unacknowledged messages stay with the broker
            await self._producer.stop()

    async def _follow_broker_stats(self) -> None:
        for topic in SYS_TOPICS:
            try:
                await self._mqtt.subscribe(topic, qos=0)
            except (BrokerError, TimeoutError) as exc:
                log.warning("cannot follow %s (broker drops will not be counted): %s", topic, exc)
    def _count_canary(self, outcome: str, n: int = 1) -> None:
        if self._metrics is not None:
            self._metrics.bridge_canaries.labels(outcome).inc(n)

    def _take_canaries(self, batch: list[InboundMessage]) -> list[InboundMessage]:
        """Echo the group's canaries, settle our own echoes; the uplinks are what is left."""
        uplinks: list[InboundMessage] = []
        control: list[InboundMessage] = []
        for m in batch:
            if m.topic == self._echo_topic:
                control.append(m)
                if self.canary.returned(m.payload):
                    self._count_canary("returned")
            elif (origin := canary_origin(m.topic)) is not None:
                control.append(m)
                if self.canary.same_group(m.payload):
                    self._publish_quietly(echo_topic(origin), m.payload)
                    self._count_canary("echoed")
            else:
                uplinks.append(m)
        if control:
            self._mqtt.ack(control)
        return uplinks

    def _publish_quietly(self, topic: str, payload: bytes) -> asyncio.Future[None]:
        fut = self._mqtt.publish(topic, payload, qos=1)
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # a lost echo is what we measure
        return fut

    def _canary_unsent(self, payload: bytes, fut: asyncio.Future[None]) -> None:
        # Refused by the broker (an ACL without the bridge's canary rights) or not connected: it
        # never reached the group, so it is not evidence of a competitor.
        if fut.cancelled() or fut.exception() is None or self._stopping.is_set():
            return  # (stopping: the client went away before its PUBACK; nothing to report)
        if self.canary.returned(payload):
            self._count_canary("unsent")
            log.warning("canary on %s not sent: %s", self._canary_topic, fut.exception())

    def _canary_tick(self) -> None:
        now = time.monotonic()
        if now >= self._next_canary:
            self._next_canary = now + self._canary_interval_s
            payload = self.canary.next_payload()
            fut = self._publish_quietly(self._canary_topic, payload)
            fut.add_done_callback(lambda f: self._canary_unsent(payload, f))
            self._count_canary("sent")
        lost = self.canary.expire()
        if lost:
            self.canaries_lost += lost
            self._count_canary("lost", lost)
            log.warning(
                "%d canary message(s) on %s were not returned by any bridge of group %r within %.0fs: "
                "another client may be consuming the shared subscription (uplinks it takes are lost)",
                lost, self._canary_topic, self._share_group, self.canary.timeout_s,
            )

    async def _forward(self, batch: list[InboundMessage]) -> None:
        if not batch:
            return
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
                self.canary.pause()  # we read no MQTT while stalled: canaries are late, not lost
                if self._metrics is not None:
                    self._metrics.retries.labels("bridge").inc()
                await asyncio.sleep(self._retry_backoff_s)
        self.canary.resume()
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
