"""paho-mqtt 2 on asyncio.

paho runs its network loop in its own thread (``loop_start``). Everything
that crosses into the event loop goes through ``call_soon_threadsafe``, in
batches: a callback appends to a deque and schedules one drain, so a burst
of ten thousand PUBACKs costs one wake-up, not ten thousand.

Inbound messages use manual acknowledgement: the PUBACK for a QoS 1 message
is sent only when the caller says the message is safe (for the bridge: in
Kafka). A semaphore bounds messages handed over but not yet acknowledged;
when it is exhausted paho's thread blocks, stops reading the socket, and the
broker holds the backlog: backpressure instead of unbounded memory.

The bridge uses ``brokers/mqtt_asyncio.py`` by default (``CITYSENSE_BRIDGE_MQTT_CLIENT``; paho's
per-message parsing was most of its CPU, see ingest/README.md); this client serves the simulators'
devices, the tests and load tests, and the bridge when ``paho`` is chosen.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from brokers.exceptions import BrokerError, BrokerUnavailableError, NotStartedError
from brokers.mqtt_base import ConnectionListener, InboundMessage, MqttConfig

log = logging.getLogger(__name__)

__all__ = ["ConnectionListener", "InboundMessage", "MqttClient", "MqttConfig"]


def _options(qos: int) -> SubscribeOptions:
    # Retained messages are never sent on (re-)subscribe: a retained uplink is a message a device
    # published once, and must be ingested once, not again at every bridge reconnect.
    return SubscribeOptions(qos=qos, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)


class MqttClient:
    """One MQTT 5 connection, usable from asyncio."""

    def __init__(
        self, config: MqttConfig, *, manual_ack: bool = False,
        on_connection: ConnectionListener | None = None,
    ) -> None:
        self.config = config
        self._manual_ack = manual_ack
        self._on_connection = on_connection
        self._client: paho.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connected: asyncio.Future[None] | None = None
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._acked: collections.deque[tuple[int, int]] = collections.deque()
        self._ack_drain_scheduled = False
        self._inbox: collections.deque[InboundMessage] = collections.deque()
        self._inbox_event = asyncio.Event()
        self._inbox_wake_scheduled = False
        self._slots = threading.Semaphore(config.max_unacked_inbound)
        self._closing = False
        self._subscriptions: list[tuple[str, int]] = []
        self._subacks: dict[int, asyncio.Future[None]] = {}
        self._side_handlers: dict[str, Callable[[str, bytes], None]] = {}
        self.disconnects = 0

    def on_side_messages(self, topic_filter: str, handler: Callable[[str, bytes], None]) -> None:
        """Send QoS 0 messages matching ``topic_filter`` (status topics such as ``$SYS/#``) to
        ``handler`` on the event loop, outside the bounded inbox: they are never acknowledged and
        never hold paho's thread while the inbox is full. Call before ``start()``."""
        self._side_handlers[topic_filter] = handler

    def set_connection_listener(self, listener: ConnectionListener | None) -> None:
        self._on_connection = listener

    # -- lifecycle ----------------------------------------------------------
    async def start(self) -> None:
        if self._client is not None:
            return
        self._loop = asyncio.get_running_loop()
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.config.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            manual_ack=self._manual_ack,
        )
        if self.config.username is not None:
            client.username_pw_set(self.config.username, self.config.password)
        if self.config.tls:  # verifies the broker's certificate and host name
            client.tls_set(ca_certs=self.config.ca_file, certfile=self.config.cert_file,
                           keyfile=self.config.key_file)
        client.max_inflight_messages_set(self.config.max_inflight)
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(min_delay=1, max_delay=self.config.reconnect_max_s)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        for topic_filter in self._side_handlers:
            client.message_callback_add(topic_filter, self._on_side_message)
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        if self.config.session_expiry_s:
            props.SessionExpiryInterval = self.config.session_expiry_s
        if self._manual_ack:
            # The broker sends at most this many unacknowledged QoS 1 messages, so the bound on
            # what we hold is enforced upstream and paho's thread (which also sends keepalive
            # PINGREQs) never has to block on the semaphore below for QoS 1 traffic.
            props.ReceiveMaximum = min(self.config.max_unacked_inbound, 65_535)
        self._connected = self._loop.create_future()
        host, port = self.config.host_port
        try:
            client.connect(
                host, port, keepalive=self.config.keepalive_s,
                clean_start=self.config.clean_start, properties=props,
            )
        except OSError as exc:
            raise BrokerUnavailableError(f"MQTT broker at {host}:{port}: {exc}") from exc
        self._client = client
        client.loop_start()
        try:
            await asyncio.wait_for(self._connected, timeout=15)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        self._closing = True
        # Free paho's thread if it is blocked on a full inbox, then drain and close.
        for _ in range(len(self._inbox) + 1):
            self._slots.release()
        await asyncio.to_thread(self._disconnect_and_join, client)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(BrokerUnavailableError("MQTT client stopped before PUBACK"))
        self._pending.clear()

    @staticmethod
    def _disconnect_and_join(client: paho.Client) -> None:
        client.disconnect()
        client.loop_stop()

    # -- paho thread callbacks (never touch asyncio objects directly) --------
    def _describe(self) -> str:
        return self.config.describe()

    def _report(self, event: str, reason: Any) -> None:
        if self._on_connection is not None:
            self._on_connection(event, int(getattr(reason, "value", reason) or 0), str(reason))

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        assert self._loop is not None
        # Every change is logged with the broker's reason: a bridge that loses its connection (or
        # its session, to a client that took its id) must say so.
        code = int(getattr(reason, "value", 0))
        if reason.is_failure:
            log.warning("MQTT connect to %s refused: %s (reason code %#x)", self._describe(), reason, code)
            self._report("refused", reason)
        else:
            log.info("MQTT connected to %s (session present: %s)", self._describe(),
                     bool(getattr(flags, "session_present", False)))
            self._report("connected", reason)
        if not reason.is_failure and self._subscriptions:
            client.subscribe([(t, _options(q)) for t, q in self._subscriptions])  # again after a reconnect
        self._loop.call_soon_threadsafe(self._connect_result, reason.is_failure, str(reason))

    def _connect_result(self, failed: bool, reason: str) -> None:
        fut = self._connected
        if fut is None or fut.done():
            return
        if failed:
            fut.set_exception(BrokerError(f"MQTT connect refused: {reason}"))
        else:
            fut.set_result(None)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.disconnects += 1
        code = int(getattr(reason, "value", 0))
        if self._closing:
            log.info("MQTT disconnected from %s (stopping)", self._describe())
        else:
            log.warning("MQTT connection to %s lost: %s (reason code %#x); reconnecting",
                        self._describe(), reason, code)
        self._report("disconnected", reason)
        if self._loop is not None and not self._closing:
            self._loop.call_soon_threadsafe(self._connect_result, True, str(reason))

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        self._acked.append((mid, int(getattr(reason, "value", 0))))
        if not self._ack_drain_scheduled and self._loop is not None:
            self._ack_drain_scheduled = True
            self._loop.call_soon_threadsafe(self._drain_acks)

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        failed = [str(r) for r in reasons if r.is_failure]
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._suback, mid, "; ".join(failed))

    def _suback(self, mid: int, failure: str) -> None:
        fut = self._subacks.pop(mid, None)
        if fut is None or fut.done():
            return
        if failure:
            fut.set_exception(BrokerError(f"subscription refused: {failure}"))
        else:
            fut.set_result(None)

    def _on_message(self, client: Any, userdata: Any, message: paho.MQTTMessage) -> None:
        self._slots.acquire()  # blocks paho's thread when too much is unacknowledged
        if self._closing:
            return
        self._inbox.append(
            InboundMessage(message.topic, bytes(message.payload), message.qos, message.mid, time.time_ns())
        )
        if not self._inbox_wake_scheduled and self._loop is not None:
            self._inbox_wake_scheduled = True
            self._loop.call_soon_threadsafe(self._wake_inbox)

    def _on_side_message(self, client: Any, userdata: Any, message: paho.MQTTMessage) -> None:
        if self._loop is None or self._closing:
            return
        for topic_filter, handler in self._side_handlers.items():
            if paho.topic_matches_sub(topic_filter, message.topic):
                self._loop.call_soon_threadsafe(handler, message.topic, bytes(message.payload))

    # -- event-loop side ----------------------------------------------------
    def _drain_acks(self) -> None:
        self._ack_drain_scheduled = False
        while self._acked:
            mid, code = self._acked.popleft()
            fut = self._pending.pop(mid, None)
            if fut is None or fut.done():
                continue
            if code >= 0x80:
                fut.set_exception(BrokerError(f"PUBLISH mid={mid} refused, reason code {code:#x}"))
            else:
                fut.set_result(None)

    def _wake_inbox(self) -> None:
        self._inbox_wake_scheduled = False
        self._inbox_event.set()

    def _require(self) -> paho.Client:
        if self._client is None:
            raise NotStartedError("MqttClient used before start()")
        return self._client

    def publish(
        self, topic: str, payload: bytes, qos: int = 1, *, retain: bool = False,
    ) -> asyncio.Future[None]:
        """Queue a PUBLISH; the future resolves on PUBACK (QoS 1) or on send (QoS 0)."""
        client = self._require()
        assert self._loop is not None
        info = client.publish(topic, payload, qos=qos, retain=retain)
        # While disconnected paho keeps a QoS 1 message and sends it after the reconnect: its PUBACK
        # will settle the future, like any other (an at-least-once device re-sends, it does not give up).
        queued = info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos > 0
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS and not queued:
            fut: asyncio.Future[None] = self._loop.create_future()
            fut.set_exception(BrokerUnavailableError(f"publish to {topic}: {paho.error_string(info.rc)}"))
            return fut
        fut = self._loop.create_future()
        self._pending[info.mid] = fut
        return fut

    async def publish_many(self, messages: Sequence[tuple[str, bytes]], qos: int = 1) -> None:
        await asyncio.gather(*(self.publish(t, p, qos) for t, p in messages))

    async def subscribe(self, topic: str, qos: int = 1) -> None:
        client = self._require()
        assert self._loop is not None
        self._subscriptions.append((topic, qos))
        result, mid = client.subscribe(topic, options=_options(qos))
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise BrokerError(f"subscribe {topic}: {paho.error_string(result)}")
        fut: asyncio.Future[None] = self._loop.create_future()
        self._subacks[mid] = fut
        await asyncio.wait_for(fut, timeout=15)  # SUBACK: from here on nothing is missed

    async def receive_batch(self, max_messages: int, timeout_s: float) -> list[InboundMessage]:
        """Up to ``max_messages`` inbound messages; waits at most ``timeout_s`` for the first."""
        if not self._inbox:
            self._inbox_event.clear()
            if not self._inbox:
                try:
                    await asyncio.wait_for(self._inbox_event.wait(), timeout_s)
                except TimeoutError:
                    return []
        batch: list[InboundMessage] = []
        while self._inbox and len(batch) < max_messages:
            batch.append(self._inbox.popleft())
        return batch

    def ack(self, messages: Sequence[InboundMessage]) -> None:
        """Acknowledge handed-over messages (sends PUBACK for QoS 1)."""
        client = self._client
        for m in messages:
            if client is not None and self._manual_ack and m.qos > 0:
                client.ack(m.mid, m.qos)
            self._slots.release()

    @property
    def unacked_inbound(self) -> int:
        return len(self._inbox)
