"""MQTT 3.1.1 and 5 control packets, as the embedded broker reads and writes them.

Only what a broker needs: it decodes what clients send (CONNECT, PUBLISH,
PUBACK, SUBSCRIBE, UNSUBSCRIBE, PINGREQ, DISCONNECT) and encodes what it
answers. MQTT 5 properties are decoded into a dict (user properties into a
list); a PUBLISH keeps its property bytes as received so they are forwarded
unchanged to MQTT 5 subscribers. Anything malformed raises ``ProtocolError``
with the MQTT 5 reason code the connection is closed with.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from brokers.mqtt_broker.exceptions import ProtocolError

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK = 8, 9, 10, 11
PINGREQ, PINGRESP, DISCONNECT, AUTH = 12, 13, 14, 15

MALFORMED, PROTOCOL_ERROR = 0x81, 0x82

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
SESSION_EXPIRY, RECEIVE_MAXIMUM, TOPIC_ALIAS = 0x11, 0x21, 0x23
ASSIGNED_CLIENT_ID, MAXIMUM_QOS, RETAIN_AVAILABLE = 0x12, 0x24, 0x25
SUBSCRIPTION_IDS_AVAILABLE, MAXIMUM_PACKET_SIZE = 0x29, 0x27
_BYTE = {0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A}
_TWO = {0x13, 0x21, 0x22, 0x23}
_FOUR = {0x02, 0x11, 0x18, 0x27}
_VARINT = {0x0B}
_TEXT = {0x03, 0x08, 0x12, 0x15, 0x1A, 0x1C, 0x1F}
_BINARY = {0x09, 0x16}
USER_PROPERTY = 0x26


def varint(n: int) -> bytes:
    if not 0 <= n < 268_435_456:
        raise ValueError(f"{n} does not fit an MQTT variable byte integer")
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def read_varint(buf: bytes | bytearray | memoryview, pos: int) -> tuple[int, int] | None:
    """``(value, next position)``, or None when the buffer ends first."""
    value = shift = 0
    for i in range(4):
        if pos + i >= len(buf):
            return None
        byte = buf[pos + i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos + i + 1
        shift += 7
    raise ProtocolError("variable byte integer longer than 4 bytes", MALFORMED)


class Reader:
    """Cursor over one packet's body; every read checks the bounds."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ProtocolError("packet shorter than its fields", MALFORMED)
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def byte(self) -> int:
        return self._take(1)[0]

    def u16(self) -> int:
        return int(_U16.unpack(self._take(2))[0])

    def u32(self) -> int:
        return int(_U32.unpack(self._take(4))[0])

    def varint(self) -> int:
        got = read_varint(self.data, self.pos)
        if got is None:
            raise ProtocolError("truncated variable byte integer", MALFORMED)
        value, self.pos = got
        return value

    def binary(self) -> bytes:
        return self._take(self.u16())

    def text(self) -> str:
        raw = self.binary()
        try:
            out = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("string is not UTF-8", MALFORMED) from None
        if "\x00" in out:
            raise ProtocolError("string contains U+0000", MALFORMED)
        return out

    def rest(self) -> bytes:
        out = self.data[self.pos:]
        self.pos = len(self.data)
        return out

    def left(self) -> int:
        return len(self.data) - self.pos

    def properties(self) -> tuple[dict[int, Any], bytes]:
        """MQTT 5 properties: ``(decoded, raw bytes without the length)``."""
        end = self.varint() + self.pos
        if end > len(self.data):
            raise ProtocolError("properties longer than the packet", MALFORMED)
        start = self.pos
        props: dict[int, Any] = {}
        while self.pos < end:
            key = self.varint()
            if key in _BYTE:
                value: Any = self.byte()
            elif key in _TWO:
                value = self.u16()
            elif key in _FOUR:
                value = self.u32()
            elif key in _VARINT:
                value = self.varint()
            elif key in _TEXT:
                value = self.text()
            elif key in _BINARY:
                value = self.binary()
            elif key == USER_PROPERTY:
                props.setdefault(key, []).append((self.text(), self.text()))
                continue
            else:
                raise ProtocolError(f"unknown property 0x{key:02x}", MALFORMED)
            if key in props:
                raise ProtocolError(f"property 0x{key:02x} given twice", PROTOCOL_ERROR)
            props[key] = value
        if self.pos != end:
            raise ProtocolError("properties overrun their length", MALFORMED)
        return props, self.data[start:end]


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
    raw_properties: bytes = b""  # forwarded as they came to MQTT 5 subscribers


@dataclass(frozen=True, slots=True)
class Subscribe:
    packet_id: int
    filters: list[tuple[str, int]]  # (topic filter, options byte)


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    packet_id: int
    filters: list[str]


def parse_connect(body: bytes) -> Connect:
    r = Reader(body)
    name, version = r.text(), r.byte()
    if name != "MQTT" or version not in (4, 5):
        raise ProtocolError(f"protocol {name!r} level {version} is not MQTT 3.1.1 or 5", 0x84)
    flags, keepalive = r.byte(), r.u16()
    if flags & 0x01:
        raise ProtocolError("reserved CONNECT flag set", MALFORMED)
    props = r.properties()[0] if version == 5 else {}
    client_id = r.text()
    will = None
    if flags & 0x04:
        will_props = r.properties()[1] if version == 5 else b""
        topic, payload = r.text(), r.binary()
        will = Publish(topic, payload, (flags >> 3) & 0x03, bool(flags & 0x20), raw_properties=will_props)
        if will.qos > 2:
            raise ProtocolError("will QoS 3", MALFORMED)
    username = r.text() if flags & 0x80 else None
    password = r.binary() if flags & 0x40 else None
    if r.left():
        raise ProtocolError("bytes after the CONNECT payload", MALFORMED)
    return Connect(version, client_id, bool(flags & 0x02), keepalive, username, password, props, will)


def parse_publish(flags: int, body: bytes, version: int) -> Publish:
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise ProtocolError("PUBLISH with QoS 3", MALFORMED)
    r = Reader(body)
    topic = r.text()
    packet_id = r.u16() if qos else 0
    if qos and packet_id == 0:
        raise ProtocolError("QoS 1 PUBLISH with packet id 0", PROTOCOL_ERROR)
    raw = b""
    if version == 5:
        props, raw = r.properties()
        if TOPIC_ALIAS in props:
            raise ProtocolError("topic alias used, but the broker allows none", 0x94)
    if not topic or "+" in topic or "#" in topic:
        raise ProtocolError(f"invalid topic name {topic!r}", 0x90)
    return Publish(topic, r.rest(), qos, bool(flags & 0x01), bool(flags & 0x08), packet_id, raw)


def parse_subscribe(body: bytes, version: int) -> Subscribe:
    r = Reader(body)
    packet_id = r.u16()
    if version == 5:
        r.properties()
    filters = []
    while r.left():
        filters.append((r.text(), r.byte()))
    if not filters:
        raise ProtocolError("SUBSCRIBE without a topic filter", PROTOCOL_ERROR)
    return Subscribe(packet_id, filters)


def parse_unsubscribe(body: bytes, version: int) -> Unsubscribe:
    r = Reader(body)
    packet_id = r.u16()
    if version == 5:
        r.properties()
    filters = []
    while r.left():
        filters.append(r.text())
    return Unsubscribe(packet_id, filters)


def parse_disconnect(body: bytes, version: int) -> tuple[int, dict[int, Any]]:
    if version != 5 or not body:
        return 0, {}
    r = Reader(body)
    code = r.byte()
    return code, (r.properties()[0] if r.left() else {})


def _str(s: str) -> bytes:
    raw = s.encode()
    return _U16.pack(len(raw)) + raw


def _props(items: list[tuple[int, Any]]) -> bytes:
    out = bytearray()
    for key, value in items:
        out += varint(key)
        if key in _BYTE:
            out.append(value)
        elif key in _TWO:
            out += _U16.pack(value)
        elif key in _FOUR:
            out += _U32.pack(value)
        elif key in _TEXT:
            out += _str(value)
        else:
            raise ValueError(f"cannot encode property 0x{key:02x}")
    return varint(len(out)) + bytes(out)


def packet(kind: int, flags: int, body: bytes) -> bytes:
    return bytes([kind << 4 | flags]) + varint(len(body)) + body


def connack(version: int, code: int, session_present: bool = False,
            properties: list[tuple[int, Any]] | None = None) -> bytes:
    body = bytes([1 if session_present else 0, code])
    if version == 5:
        body += _props(properties or [])
    return packet(CONNACK, 0, body)


def publish(msg: Publish, qos: int, packet_id: int, version: int, dup: bool = False) -> bytes:
    body = _str(msg.topic) + (_U16.pack(packet_id) if qos else b"")
    if version == 5:
        body += varint(len(msg.raw_properties)) + msg.raw_properties
    return packet(PUBLISH, (0x08 if dup else 0) | qos << 1, body + msg.payload)


def puback(packet_id: int, version: int, code: int = 0) -> bytes:
    if version == 5 and code:
        return packet(PUBACK, 0, _U16.pack(packet_id) + bytes([code]))
    return packet(PUBACK, 0, _U16.pack(packet_id))


def suback(packet_id: int, version: int, codes: list[int]) -> bytes:
    return packet(SUBACK, 0, _U16.pack(packet_id) + (b"\x00" if version == 5 else b"") + bytes(codes))


def unsuback(packet_id: int, version: int, codes: list[int]) -> bytes:
    tail = b"\x00" + bytes(codes) if version == 5 else b""
    return packet(UNSUBACK, 0, _U16.pack(packet_id) + tail)


def disconnect(version: int, code: int) -> bytes:
    return packet(DISCONNECT, 0, bytes([code, 0]) if version == 5 else b"")


PINGRESP_PACKET = packet(PINGRESP, 0, b"")
