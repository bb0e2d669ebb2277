"""An MQTT 5 client on the event loop, for the bridge's inbound path (``MqttClientApi``).

Why the project has its own: the bridge cost 124 µs of CPU per uplink with paho, about half of it
in paho's packet parsing, with MQTT 5 ``Properties`` objects built per message and a thread
hand-off (see ``ingest/README.md``, "Bridge MQTT client" for the measurements). Here a PUBLISH is
parsed in ``brokers/mqtt_connection.py`` without leaving the event loop.

What it keeps of the paho client: username/password, TLS (mqtts:// with CA, client certificate),
persistent sessions (clean start off + session expiry, so the broker re-sends what a crashed bridge
never acknowledged), subscriptions with retain handling "don't send", QoS 1 with manual
acknowledgement, PUBACKs in the order the PUBLISHes arrived, backpressure (the CONNECT Receive
Maximum bounds unacknowledged QoS 1 messages at the broker, and the socket is not read while the
application holds ``max_unacked_inbound``), keepalive pings, reconnection with capped back-off
(subscriptions and unacknowledged outbound PUBLISHes re-sent), connection events, side-message
handlers. Not implemented: QoS 2, will messages, topic aliases, enhanced authentication.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import ssl
import time
from collections.abc import Sequence

from brokers.exceptions import BrokerError, BrokerUnavailableError, NotStartedError
from brokers.mqtt_base import ConnectionListener, InboundMessage, MqttConfig, SideHandler
from brokers.mqtt_connection import Connection
from brokers.mqtt_outbound import Outbound
from brokers.mqtt_packets import (
    Connack,
    Connect,
    Disconnect,
    Packet,
    Ping,
    Puback,
    Suback,
    encode_connect,
    encode_disconnect,
)
from brokers.mqtt_wire import (
    PINGREQ,
    RECEIVE_MAXIMUM,
    SERVER_KEEP_ALIVE,
    SESSION_EXPIRY,
    prop,
    reason_name,
    topic_matches,
)

log = logging.getLogger("brokers.mqtt")  # the same logger as the paho client: one place to look
UNSPECIFIED = 0x80  # the connection closed without a DISCONNECT from the server


class AsyncioMqttClient:
    def __init__(self, config: MqttConfig, *, manual_ack: bool = False,
                 on_connection: ConnectionListener | None = None) -> None:
        self.config = config
        self._manual_ack = manual_ack
        self._on_connection = on_connection
        self._side: list[tuple[str, str, SideHandler]] = []  # (filter, literal prefix, handler)
        self._side_prefixes: tuple[str, ...] = ()
        self._conn: Connection | None = None
        self._number = 0
        self._runner: asyncio.Task[None] | None = None
        self._closing = False
        self._inbox: collections.deque[InboundMessage] = collections.deque()
        self._inbox_event = asyncio.Event()
        self._held = 0  # handed to the inbox and not yet acknowledged
        self._out = Outbound()
        self.disconnects = 0

    def on_side_messages(self, topic_filter: str, handler: SideHandler) -> None:
        prefix = topic_filter.split("+", 1)[0].split("#", 1)[0]
        self._side.append((topic_filter, prefix, handler))
        self._side_prefixes = tuple(p for _, p, _ in self._side)

    def set_connection_listener(self, listener: ConnectionListener | None) -> None:
        self._on_connection = listener

    def _report(self, event: str, code: int, reason: str) -> None:
        if self._on_connection is not None:
            self._on_connection(event, code, reason)

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._runner is not None:
            return
        self._closing = False
        first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._runner = asyncio.create_task(self._run(first), name=f"mqtt-{self.config.client_id}")
        try:
            await asyncio.wait_for(first, timeout=15)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._closing = True
        conn = self._conn
        if conn is not None and conn.write(encode_disconnect(Disconnect(0))):
            conn.server_reason = 0  # ours: a normal disconnection
            assert conn.transport is not None
            conn.transport.close()
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        if conn is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(conn.closed), 5)
            conn.abort()
        self._out.stopped()

    async def _run(self, first: asyncio.Future[None]) -> None:
        delay = 1.0
        while not self._closing:
            try:
                conn = await self._connect()
            except Exception as exc:
                if not first.done():  # start() raises it
                    first.set_exception(exc)
                    return
                # Expected failures (refused, unreachable, timed out) in one line; anything else
                # with its traceback. Either way the bridge keeps trying: it must come back by itself.
                expected = isinstance(exc, BrokerError | TimeoutError)
                log.warning("MQTT reconnect to %s failed: %s; next try in %.0fs",
                            self.config.describe(), exc, delay, exc_info=not expected)
            else:
                delay = 1.0
                if not first.done():
                    first.set_result(None)
                await self._keep_alive(conn)
            await asyncio.sleep(delay)
            delay = min(delay * 2, float(self.config.reconnect_max_s))

    def _ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.config.ca_file)  # verifies certificate and host
        if self.config.cert_file:
            ctx.load_cert_chain(self.config.cert_file, self.config.key_file)
        return ctx

    async def _connect(self) -> Connection:
        cfg, loop = self.config, asyncio.get_running_loop()
        host, port = cfg.host_port
        self._number += 1
        number = self._number
        try:
            tls = self._ssl() if cfg.tls else None
            _, conn = await asyncio.wait_for(loop.create_connection(
                lambda: Connection(number, self._publish_in, self._control, self._lost), host, port,
                ssl=tls), 15)
        except OSError as exc:  # also TLS: a certificate that does not verify, an unreadable CA file
            raise BrokerUnavailableError(f"MQTT broker at {host}:{port}: {exc}") from exc
        props: list[tuple[int, int]] = []
        if cfg.session_expiry_s:
            props.append((SESSION_EXPIRY, cfg.session_expiry_s))
        if self._manual_ack:  # the broker sends at most this many unacknowledged QoS 1 messages
            props.append((RECEIVE_MAXIMUM, min(cfg.max_unacked_inbound, 65_535)))
        conn.write(encode_connect(Connect(cfg.client_id, cfg.username, cfg.password, cfg.keepalive_s,
                                          cfg.clean_start, tuple(props))))
        try:
            connack = await asyncio.wait_for(asyncio.shield(conn.connack), 15)
        except BaseException:
            conn.abort()
            raise
        code, reason = connack.reason_code, reason_name(connack.reason_code)
        if code >= 0x80:
            log.warning("MQTT connect to %s refused: %s (reason code %#x)", cfg.describe(), reason, code)
            self._report("refused", code, reason)
            conn.abort()
            raise BrokerError(f"MQTT connect refused: {reason} (reason code {code:#x})")
        log.info("MQTT connected to %s (session present: %s)", cfg.describe(), connack.session_present)
        self._conn = conn
        keepalive = prop(connack.properties, SERVER_KEEP_ALIVE, cfg.keepalive_s)
        conn.keepalive = keepalive if isinstance(keepalive, int) else cfg.keepalive_s  # the server's wins
        self._report("connected", code, reason)
        self._out.connected(conn)
        return conn

    async def _keep_alive(self, conn: Connection) -> None:
        """PINGREQ every half keepalive until the connection closes; a silent broker is dropped."""
        keepalive = conn.keepalive
        while not conn.closed.done():
            await asyncio.wait([conn.closed], timeout=keepalive / 2 if keepalive else None)
            if conn.closed.done():
                break
            if not conn.reading_paused and time.monotonic() - conn.last_rx > keepalive * 1.5:
                log.warning("MQTT broker %s silent for %ds, reconnecting", self.config.describe(), keepalive)
                conn.abort()
            else:
                conn.write(PINGREQ)

    # -- connection callbacks (on the event loop) ------------------------------------------------
    def _lost(self, conn: Connection, exc: Exception | None) -> None:
        self._out.lost(exc)
        if conn is not self._conn:
            return  # never connected (refused, or closed before CONNACK)
        self._conn = None
        self.disconnects += 1
        code = UNSPECIFIED if conn.server_reason is None else conn.server_reason
        reason = "Normal disconnection" if code == 0 else reason_name(code)
        if self._closing:
            log.info("MQTT disconnected from %s (stopping)", self.config.describe())
        else:
            log.warning("MQTT connection to %s lost: %s (reason code %#x); reconnecting",
                        self.config.describe(), reason, code)
        self._report("disconnected", code, reason)

    def _publish_in(self, conn: Connection, topic: str, payload: bytes, qos: int, pid: int,
                    now_ns: int) -> None:
        if self._side_prefixes and topic.startswith(self._side_prefixes) and self._to_side(topic, payload):
            if qos:
                conn.acknowledge(pid)  # status messages are never held
            return
        self._inbox.append(InboundMessage(topic, payload, qos, pid, now_ns, conn.number))
        self._held += 1
        if not self._manual_ack and qos:
            conn.acknowledge(pid)
        if self._held >= self.config.max_unacked_inbound:
            conn.pause_reading()  # the broker holds the rest until the application acknowledges
        self._inbox_event.set()

    def _to_side(self, topic: str, payload: bytes) -> bool:
        handled = False
        for topic_filter, _, handler in self._side:
            if topic_matches(topic_filter, topic):
                handled = True
                try:
                    handler(topic, payload)
                except Exception:
                    log.exception("side-message handler for %s failed", topic_filter)
        return handled

    def _control(self, conn: Connection, packet: Packet) -> None:
        if isinstance(packet, Connack) and not conn.connack.done():
            conn.connack.set_result(packet)
        elif isinstance(packet, Puback):
            self._out.puback(packet)
        elif isinstance(packet, Suback):
            self._out.suback(packet)
        elif isinstance(packet, Disconnect):
            conn.server_reason = packet.reason_code
        elif not (isinstance(packet, Ping) and packet.response):
            log.warning("unexpected %s from the MQTT broker, closing the connection", type(packet).__name__)
            conn.abort()

    # -- the application's side ------------------------------------------------------------------
    def _require(self) -> Connection | None:
        if self._runner is None:
            raise NotStartedError("AsyncioMqttClient used before start()")
        return self._conn

    def publish(
        self, topic: str, payload: bytes, qos: int = 1, *, retain: bool = False,
    ) -> asyncio.Future[None]:
        """Queue a PUBLISH; the future resolves on PUBACK (QoS 1) or on send (QoS 0)."""
        return self._out.publish(self._require(), topic, payload, qos, retain)

    async def subscribe(self, topic: str, qos: int = 1) -> None:
        fut = self._out.subscribe(self._require(), topic, qos)
        await asyncio.wait_for(fut, timeout=15)  # SUBACK: from here on nothing is missed

    async def receive_batch(self, max_messages: int, timeout_s: float) -> list[InboundMessage]:
        """Up to ``max_messages`` inbound messages; waits at most ``timeout_s`` for the first."""
        inbox = self._inbox
        if not inbox:
            self._inbox_event.clear()
            try:
                await asyncio.wait_for(self._inbox_event.wait(), timeout_s)
            except TimeoutError:
                return []
        n = min(len(inbox), max_messages)
        return [inbox.popleft() for _ in range(n)]

    def ack(self, messages: Sequence[InboundMessage]) -> None:
        """Acknowledge handed-over messages: PUBACKs for QoS 1, in the order they were received."""
        conn = self._conn
        live = conn.number if conn is not None and self._manual_ack else -1
        for m in messages:
            # A message of an earlier connection is not acknowledged: the broker re-sends it on
            # this one (same packet id, maybe already reused for another message).
            if m.qos and m.connection == live:
                conn.acknowledge(m.mid)  # type: ignore[union-attr]
        self._held -= len(messages)
        if conn is not None:
            conn.flush_acks()
            if conn.reading_paused and self._held < self.config.max_unacked_inbound:
                conn.resume_reading()

    @property
    def unacked_inbound(self) -> int:
        return len(self._inbox)
