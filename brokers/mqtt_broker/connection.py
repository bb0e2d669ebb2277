"""One client connection of the embedded broker: parsing, login, PUBLISH/SUBSCRIBE handling."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from brokers.exceptions import MqttProtocolError
from brokers.mqtt_broker import packets as p
from brokers.mqtt_broker.access import may_subscribe, may_write
from brokers.mqtt_broker.exceptions import ProtocolError
from brokers.mqtt_broker.sessions import Session
from brokers.mqtt_broker.topics import split_shared, valid_filter
from brokers.mqtt_wire import decode_varint

if TYPE_CHECKING:
    from brokers.mqtt_broker.server import MqttBroker

log = logging.getLogger(__name__)
NEVER = 0xFFFFFFFF  # MQTT 5 session expiry: never


class Connection(asyncio.Protocol):
    def __init__(self, broker: MqttBroker) -> None:
        self.broker = broker
        self.version = 4
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.session: Session | None = None
        self.username = ""
        self.rules: tuple[tuple[int, str], ...] = ()
        self.writable: dict[str, bool] = {}
        self.keepalive = 0.0
        self.last_seen = time.monotonic()
        self.opened = self.last_seen
        self.will: p.Publish | None = None
        self.out: list[bytes] = []
        self.is_paused = False

    # -- transport callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.broker.links.add(self)
        self.broker.stats.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.broker.links.discard(self)
        self.broker.paused.discard(self)
        session, self.session = self.session, None
        if session is not None and session.link is self:
            session.link, session.disconnected_at = None, time.monotonic()
            if not session.persistent:
                self.broker.end_session(session)
            else:
                self.broker.queued(session)
        if self.will is not None:
            will, self.will = self.will, None
            if may_write(self.rules, will.topic):
                self.broker.publish(None, will)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.last_seen = time.monotonic()
        try:
            self._parse()
        except MqttProtocolError as exc:
            reason = exc.reason if isinstance(exc, ProtocolError) else p.MALFORMED
            log.info("embedded broker: closing %s: %s", self.session and self.session.client_id, exc)
            self.close(p.disconnect(self.version, reason) if self.session else b"")
        self._flush()

    def _parse(self) -> None:
        buf, pos = self.buffer, 0
        while self.transport is not None and len(buf) - pos >= 2:
            got = decode_varint(buf, pos + 1)
            if got is None:
                break
            length, start = got
            if length > self.broker.config.max_packet:
                raise ProtocolError(f"packet of {length} bytes over the limit", 0x95)
            if len(buf) - start < length:
                break
            self._handle(buf[pos] >> 4, buf[pos] & 0x0F, bytes(buf[start:start + length]))
            pos = start + length
        del buf[:pos]

    # -- output
    def send(self, data: bytes) -> None:
        if not self.out and self.transport is not None:
            asyncio.get_running_loop().call_soon(self._flush)
        self.out.append(data)

    def _flush(self) -> None:
        if self.out and self.transport is not None:
            self.transport.write(b"".join(self.out))
        self.out.clear()

    def close(self, farewell: bytes = b"") -> None:
        if self.transport is not None:
            self._flush()
            if farewell:
                self.transport.write(farewell)
            self.transport.close()
            self.transport = None

    def pause(self) -> None:
        if not self.is_paused and self.transport is not None:
            self.is_paused = True
            self.transport.pause_reading()
            self.broker.paused.add(self)
            self.broker.stats.paused += 1

    def resume(self) -> None:
        self.broker.paused.discard(self)
        if self.is_paused and self.transport is not None:
            self.is_paused = False
            self.transport.resume_reading()

    def check_alive(self, now: float) -> None:
        if self.session is None and now - self.opened > self.broker.config.connect_timeout_s:
            self.close()
        elif self.keepalive and not self.is_paused and now - self.last_seen > 1.5 * self.keepalive:
            self.close(p.disconnect(self.version, 0x8D))  # keep alive timeout

    # -- packets
    def _handle(self, kind: int, flags: int, body: bytes) -> None:
        if self.session is None:
            if kind != p.CONNECT:
                raise ProtocolError("first packet is not CONNECT", p.PROTOCOL_ERROR)
            try:
                hello = p.parse_connect(body)
            except ProtocolError as exc:
                if exc.reason == 0x84:  # unsupported protocol level: say so in 3.1.1's words
                    self.close(p.connack(4, 1))
                    return
                raise
            self._connect(hello)
            return
        session = self.session
        if kind == p.PUBLISH:
            self._publish(p.parse_publish(flags, body, self.version))
        elif kind == p.PUBACK:
            if len(body) < 2:
                raise ProtocolError("PUBACK without packet id", p.MALFORMED)
            session.acked(int.from_bytes(body[:2], "big"))
            self.broker.queued(session)
        elif kind == p.SUBSCRIBE:
            self._subscribe(p.parse_subscribe(body, self.version))
        elif kind == p.UNSUBSCRIBE:
            request = p.parse_unsubscribe(body, self.version)
            codes = []
            for full in request.filters:
                entry = session.subscriptions.pop(full, None)
                if entry is not None:
                    self.broker.tree.remove(session, entry[0], entry[1])
                codes.append(0 if entry else 0x11)
            self.send(p.unsuback(request.packet_id, self.version, codes))
        elif kind == p.PINGREQ:
            self.send(p.PINGRESP_PACKET)
        elif kind == p.DISCONNECT:
            code, props = p.parse_disconnect(body, self.version)
            if p.SESSION_EXPIRY in props:
                session.expiry_s = None if props[p.SESSION_EXPIRY] == NEVER else props[p.SESSION_EXPIRY]
                session.persistent = props[p.SESSION_EXPIRY] > 0
            if code != 0x04:  # 0x04: disconnect with will message
                self.will = None
            self.close()
        else:
            raise ProtocolError(f"packet type {kind} not supported", 0x82 if kind != p.AUTH else 0x8C)

    def _connect(self, c: p.Connect) -> None:
        self.version, self.keepalive = c.version, float(c.keepalive)
        broker = self.broker
        if not broker.access.authenticate(c.username, c.password):
            broker.stats.refused_logins += 1
            self.close(p.connack(c.version, 0x86 if c.version == 5 else 4))
            return
        assert c.username is not None
        client_id, props = c.client_id, c.properties
        assigned = not client_id
        if assigned:
            if c.version == 4 and not c.clean:
                self.close(p.connack(4, 2))  # identifier rejected
                return
            client_id = broker.assign_id()
        if not broker.access.client_id_allowed(c.username, client_id):
            broker.stats.refused_logins += 1
            self.close(p.connack(c.version, 0x85 if c.version == 5 else 2))  # client id not valid
            return
        self.username = c.username
        self.rules = broker.access.rules_for(c.username, client_id)
        if c.version == 5:
            expiry = props.get(p.SESSION_EXPIRY, 0)
            persistent, expiry_s = expiry > 0, (None if expiry == NEVER else float(expiry))
        else:
            persistent, expiry_s = not c.clean, None
        inflight = min(props.get(p.RECEIVE_MAXIMUM, broker.config.max_inflight), broker.config.max_inflight)
        old = broker.sessions.get(client_id)
        if old is not None and old.link is not None:
            taken = old.link
            assert isinstance(taken, Connection)
            taken.will = None if c.clean else taken.will
            taken.close(p.disconnect(taken.version, 0x8E))  # session taken over
            taken.connection_lost(None)
            old = broker.sessions.get(client_id)  # gone if it was not persistent
        if old is not None and c.clean:
            broker.end_session(old)
            old = None
        present = old is not None
        session = old or Session(client_id, persistent, inflight, broker.config.max_queued)
        session.persistent, session.expiry_s, session.max_inflight = persistent, expiry_s, inflight
        broker.sessions[client_id] = session
        self.session, self.will = session, c.will
        extra: list[tuple[int, Any]] = [(p.MAXIMUM_QOS, 1), (p.RETAIN_AVAILABLE, 0),
                                        (p.SUBSCRIPTION_IDS_AVAILABLE, 0),
                                        (p.MAXIMUM_PACKET_SIZE, broker.config.max_packet)]
        if assigned:
            extra.append((p.ASSIGNED_CLIENT_ID, client_id))
        self.send(p.connack(c.version, 0, present, extra))
        session.resume(self)

    def _publish(self, msg: p.Publish) -> None:
        if msg.qos == 2:
            raise ProtocolError("QoS 2 is not supported (the broker grants QoS 1 at most)", 0x9B)
        allowed = self.writable.get(msg.topic)
        if allowed is None:
            allowed = self.writable[msg.topic] = may_write(self.rules, msg.topic)
            if len(self.writable) > 1000:
                self.writable.clear()
        if allowed:
            self.broker.publish(self, msg)
        else:
            self.broker.stats.denied += 1
        if msg.qos:
            # 3.1.1 has no way to say "refused": like Mosquitto, acknowledge and drop.
            self.send(p.puback(msg.packet_id, self.version, 0 if allowed else 0x87))

    def _subscribe(self, request: p.Subscribe) -> None:
        session, codes = self.session, []
        assert session is not None
        for full, options in request.filters:
            try:
                group, topic_filter = split_shared(full)
            except ValueError:
                codes.append(0x8F if self.version == 5 else 0x80)
                continue
            if not valid_filter(topic_filter):
                codes.append(0x8F if self.version == 5 else 0x80)
            elif not may_subscribe(self.rules, topic_filter):
                codes.append(0x87 if self.version == 5 else 0x80)
            else:
                qos = min(options & 0x03, 1)
                self.broker.tree.add(session, group, topic_filter, qos)
                session.subscriptions[full] = (group, topic_filter, qos)
                codes.append(qos)
        self.send(p.suback(request.packet_id, self.version, codes))
