"""MQTT 3.1.1 and 5 control packets, as the embedded broker reads and writes them.

The wire primitives (variable byte integers, strings, properties, framing)
are the client's, ``brokers/mqtt_wire.py``; this module adds what only a
broker needs: decoding what clients send (CONNECT of either version,
PUBLISH, SUBSCRIBE, UNSUBSCRIBE, DISCONNECT) and encoding the answers for
either version. A PUBLISH keeps its MQTT 5 property bytes as received, so
they are forwarded unchanged to MQTT 5 subscribers. Anything malformed
raises ``ProtocolError`` with the MQTT 5 reason code the connection is
closed with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from brokers.mqtt_broker.exceptions import ProtocolError
from brokers.mqtt_wire import U16, Property, Reader, enc_str, encode_properties
from brokers.mqtt_wire import packet as frame

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK = 8, 9, 10, 11
PINGREQ, PINGRESP, DISCONNECT, AUTH = 12, 13, 14, 15

MALFORMED, PROTOCOL_ERROR = 0x81, 0x82
SESSION_EXPIRY, RECEIVE_MAXIMUM, TOPIC_ALIAS = 0x11, 0x21, 0x23
ASSIGNED_CLIENT_ID, MAXIMUM_QOS, RETAIN_AVAILABLE = 0x12, 0x24, 0x25
SUBSCRIPTION_IDS_AVAILABLE, MAXIMUM_PACKET_SIZE = 0x29, 0x27
NO_PROPERTIES = b"\x00"


@dataclass(frozen=True, slots=True)
class Connect:
    version: int  # 4 (3.1.1) or 5
    client_id: str
    clean: bool
    keepalive: int
    username: str | None
    password: bytes | None
    properties: dict[int, Any] = field(default_factory=dict)
    will: Publish | None = None


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str
    payload: bytes
    qos: int
    retain: bool = False
    dup: bool = False
    packet_id: int = 0
    raw_properties: bytes = NO_PROPERTIES  # length and properties, forwarded to MQTT 5 clients


@dataclass(frozen=True, slots=True)
class Subscribe:
    packet_id: int
    filters: list[tuple[str, int]]  # (topic filter, options byte)


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    packet_id: int
    filters: list[str]


def _as_dict(props: list[Property]) -> dict[int, Any]:
    return {ident: value for ident, value in props}


def _raw_properties(r: Reader) -> tuple[dict[int, Any], bytes]:
    start = r.pos
    props = _as_dict(r.properties())
    return props, bytes(r.buf[start:r.pos])


def parse_connect(body: bytes) -> Connect:
    r = Reader(body)
    name, version = r.string(), r.byte()
    if name != "MQTT" or version not in (4, 5):
        raise ProtocolError(f"protocol {name!r} level {version} is not MQTT 3.1.1 or 5", 0x84)
    flags, keepalive = r.byte(), r.u16()
    if flags & 0x01:
        raise ProtocolError("reserved CONNECT flag set", MALFORMED)
    props = _as_dict(r.properties()) if version == 5 else {}
    client_id = r.string()
    will = None
    if flags & 0x04:
        will_props = _raw_properties(r)[1] if version == 5 else NO_PROPERTIES
        topic, payload = r.string(), r.binary()
        will = Publish(topic, payload, (flags >> 3) & 0x03, bool(flags & 0x20), raw_properties=will_props)
        if will.qos > 2:
            raise ProtocolError("will QoS 3", MALFORMED)
    username = r.string() if flags & 0x80 else None
    password = r.binary() if flags & 0x40 else None
    r.done()
    return Connect(version, client_id, bool(flags & 0x02), keepalive, username, password, props, will)


def parse_publish(flags: int, body: bytes, version: int) -> Publish:
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise ProtocolError("PUBLISH with QoS 3", MALFORMED)
    r = Reader(body)
    topic = r.string()
    packet_id = r.u16() if qos else 0
    if qos and packet_id == 0:
        raise ProtocolError("QoS 1 PUBLISH with packet id 0", PROTOCOL_ERROR)
    raw = NO_PROPERTIES
    if version == 5:
        props, raw = _raw_properties(r)
        if TOPIC_ALIAS in props:
            raise ProtocolError("topic alias used, but the broker allows none", 0x94)
    if not topic or "+" in topic or "#" in topic or "\x00" in topic:
        raise ProtocolError(f"invalid topic name {topic!r}", 0x90)
    return Publish(topic, bytes(r.take(r.end - r.pos)), qos, bool(flags & 0x01), bool(flags & 0x08),
                   packet_id, raw)


def parse_subscribe(body: bytes, version: int) -> Subscribe:
    r = Reader(body)
    packet_id = r.u16()
    if version == 5:
        r.properties()
    filters = []
    while r.pos < r.end:
        filters.append((r.string(), r.byte()))
    if not filters:
        raise ProtocolError("SUBSCRIBE without a topic filter", PROTOCOL_ERROR)
    return Subscribe(packet_id, filters)


def parse_unsubscribe(body: bytes, version: int) -> Unsubscribe:
    r = Reader(body)
    packet_id = r.u16()
    if version == 5:
        r.properties()
    filters = []
    while r.pos < r.end:
        filters.append(r.string())
    return Unsubscribe(packet_id, filters)


def parse_disconnect(body: bytes, version: int) -> tuple[int, dict[int, Any]]:
    if version != 5 or not body:
        return 0, {}
    r = Reader(body)
    code = r.byte()
    return code, (_as_dict(r.properties()) if r.pos < r.end else {})


def packet(kind: int, flags: int, body: bytes) -> bytes:
    return frame(kind << 4 | flags, body)


def connack(version: int, code: int, session_present: bool = False,
            properties: list[Property] | None = None) -> bytes:
    body = bytes([1 if session_present else 0, code])
    if version == 5:
        body += encode_properties(properties or [])
    return packet(CONNACK, 0, body)


def publish(msg: Publish, qos: int, packet_id: int, version: int, dup: bool = False) -> bytes:
    body = enc_str(msg.topic) + (U16.pack(packet_id) if qos else b"")
    if version == 5:
        body += msg.raw_properties
    return packet(PUBLISH, (0x08 if dup else 0) | qos << 1, body + msg.payload)


def puback(packet_id: int, version: int, code: int = 0) -> bytes:
    if version == 5 and code:
        return packet(PUBACK, 0, U16.pack(packet_id) + bytes([code]))
    return packet(PUBACK, 0, U16.pack(packet_id))


def suback(packet_id: int, version: int, codes: list[int]) -> bytes:
    return packet(SUBACK, 0, U16.pack(packet_id) + (NO_PROPERTIES if version == 5 else b"") + bytes(codes))


def unsuback(packet_id: int, version: int, codes: list[int]) -> bytes:
    tail = NO_PROPERTIES + bytes(codes) if version == 5 else b""
    return packet(UNSUBACK, 0, U16.pack(packet_id) + tail)


def disconnect(version: int, code: int) -> bytes:
    return packet(DISCONNECT, 0, bytes([code]) + NO_PROPERTIES if version == 5 else b"")


PINGRESP_PACKET = packet(PINGRESP, 0, b"")
