"""MQTT 5 wire primitives (OASIS MQTT 5.0 §1.5, §2): variable byte integers, strings, properties,
framing, reason codes and topic filter matching. The packets are in ``brokers/mqtt_packets.py``.

Every malformed input raises :class:`MqttProtocolError`, never an ``IndexError``. Properties are
``(identifier, value)`` pairs in wire order (User Property and Subscription Identifier may
repeat); values are ``int``, ``str``, ``bytes`` or a ``(str, str)`` pair.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from brokers.exceptions import MqttProtocolError

CONNECT, CONNACK, PUBLISH, PUBACK = 0x10, 0x20, 0x30, 0x40
SUBSCRIBE, SUBACK, PINGREQ_TYPE, PINGRESP, DISCONNECT = 0x80, 0x90, 0xC0, 0xD0, 0xE0
PINGREQ = b"\xc0\x00"
MAX_VARINT = 268_435_455  # four bytes of seven bits (§1.5.5)
# Property identifiers this client sets or reads (§2.2.2.2).
SESSION_EXPIRY, RECEIVE_MAXIMUM, SERVER_KEEP_ALIVE, REASON_STRING = 0x11, 0x21, 0x13, 0x1F
TOPIC_ALIAS = 0x23
RETAIN_DO_NOT_SEND = 2 << 4  # subscription option bits 4-5 (§3.8.3.1)

U16, U32 = struct.Struct(">H"), struct.Struct(">I")
Property = tuple[int, "int | str | bytes | tuple[str, str]"]
# identifier -> type: b byte, h two-byte int, i four-byte int, v varint, s string, d binary, p pair
PROPERTY_TYPES = {
    0x01: "b", 0x02: "i", 0x03: "s", 0x08: "s", 0x09: "d", 0x0B: "v", 0x11: "i", 0x12: "s",
    0x13: "h", 0x15: "s", 0x16: "d", 0x17: "b", 0x18: "i", 0x19: "b", 0x1A: "s", 0x1C: "s",
    0x1F: "s", 0x21: "h", 0x22: "h", 0x23: "h", 0x24: "b", 0x25: "b", 0x26: "p", 0x27: "i",
    0x28: "b", 0x29: "b", 0x2A: "b",
}
REASONS = {
    0x00: "Success", 0x01: "Granted QoS 1", 0x02: "Granted QoS 2", 0x04: "Disconnect with will message",
    0x10: "No matching subscribers", 0x80: "Unspecified error", 0x81: "Malformed Packet",
    0x82: "Protocol Error", 0x83: "Implementation specific error", 0x84: "Unsupported Protocol Version",
    0x85: "Client Identifier not valid", 0x86: "Bad User Name or Password", 0x87: "Not authorized",
    0x88: "Server unavailable", 0x89: "Server busy", 0x8A: "Banned", 0x8B: "Server shutting down",
    0x8C: "Bad authentication method", 0x8D: "Keep Alive timeout", 0x8E: "Session taken over",
    0x8F: "Topic Filter invalid", 0x90: "Topic Name invalid", 0x91: "Packet Identifier in use",
    0x92: "Packet Identifier not found", 0x93: "Receive Maximum exceeded", 0x94: "Topic Alias invalid",
    0x95: "Packet too large", 0x96: "Message rate too high", 0x97: "Quota exceeded",
    0x98: "Administrative action", 0x99: "Payload format invalid", 0x9A: "Retain not supported",
    0x9B: "QoS not supported", 0x9C: "Use another server", 0x9D: "Server moved",
    0x9E: "Shared Subscriptions not supported", 0x9F: "Connection rate exceeded",
    0xA0: "Maximum connect time", 0xA1: "Subscription Identifiers not supported",
    0xA2: "Wildcard Subscriptions not supported",
}


def reason_name(code: int) -> str:
    return REASONS.get(code, f"Reason code {code:#x}")


# -- primitives -------------------------------------------------------------------------------
def encode_varint(n: int) -> bytes:
    if not 0 <= n <= MAX_VARINT:
        raise MqttProtocolError(f"variable byte integer out of range: {n}")
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def decode_varint(buf: bytes | bytearray, pos: int) -> tuple[int, int] | None:
    """(value, position after it), or None if ``buf`` ends inside it."""
    value = shift = 0
    for i in range(pos, min(pos + 4, len(buf))):
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i + 1
        shift += 7
    if len(buf) - pos >= 4:
        raise MqttProtocolError("variable byte integer longer than four bytes")
    return None


def enc_str(s: str) -> bytes:
    b = s.encode()
    if len(b) > 0xFFFF:
        raise MqttProtocolError("string longer than 65,535 bytes")
    return U16.pack(len(b)) + b


def enc_bin(b: bytes) -> bytes:
    if len(b) > 0xFFFF:
        raise MqttProtocolError("binary data longer than 65,535 bytes")
    return U16.pack(len(b)) + b


class Reader:
    """Reads one packet's body; running past its end is a malformed packet."""

    __slots__ = ("buf", "end", "pos")

    def __init__(self, buf: bytes, pos: int = 0, end: int | None = None) -> None:
        self.buf, self.pos, self.end = buf, pos, len(buf) if end is None else end

    def take(self, n: int) -> bytes:
        if self.pos + n > self.end:
            raise MqttProtocolError("packet shorter than its fields")
        self.pos += n
        return self.buf[self.pos - n:self.pos]

    def byte(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(U16.unpack(self.take(2))[0])

    def u32(self) -> int:
        return int(U32.unpack(self.take(4))[0])

    def varint(self) -> int:
        got = decode_varint(self.buf[:self.end], self.pos)
        if got is None:
            raise MqttProtocolError("packet ends inside a variable byte integer")
        value, self.pos = got
        return value

    def string(self) -> str:
        try:
            return self.take(self.u16()).decode()
        except UnicodeDecodeError as exc:
            raise MqttProtocolError(f"string is not UTF-8: {exc}") from exc

    def binary(self) -> bytes:
        return self.take(self.u16())

    def properties(self) -> list[Property]:
        length = self.varint()
        stop = self.pos + length
        if stop > self.end:
            raise MqttProtocolError("properties longer than the packet")
        out: list[Property] = []
        inner = Reader(self.buf, self.pos, stop)
        while inner.pos < stop:
            ident = inner.varint()
            kind = PROPERTY_TYPES.get(ident)
            if kind is None:
                raise MqttProtocolError(f"unknown property identifier {ident:#x}")
            value: int | str | bytes | tuple[str, str]
            if kind == "b":
                value = inner.byte()
            elif kind == "h":
                value = inner.u16()
            elif kind == "i":
                value = inner.u32()
            elif kind == "v":
                value = inner.varint()
            elif kind == "s":
                value = inner.string()
            elif kind == "d":
                value = inner.binary()
            else:
                value = (inner.string(), inner.string())
            out.append((ident, value))
        self.pos = stop
        return out

    def done(self) -> None:
        if self.pos != self.end:
            raise MqttProtocolError(f"{self.end - self.pos} unexpected bytes at the end of the packet")


def encode_properties(props: Sequence[Property]) -> bytes:
    out = bytearray()
    for ident, value in props:
        kind = PROPERTY_TYPES.get(ident)
        if kind is None:
            raise MqttProtocolError(f"unknown property identifier {ident:#x}")
        out += encode_varint(ident)
        if kind in "bhiv":
            assert isinstance(value, int)
            out += (bytes((value,)) if kind == "b" else U16.pack(value) if kind == "h"
                    else U32.pack(value) if kind == "i" else encode_varint(value))
        elif kind == "s":
            assert isinstance(value, str)
            out += enc_str(value)
        elif kind == "d":
            assert isinstance(value, bytes)
            out += enc_bin(value)
        else:
            assert isinstance(value, tuple)
            out += enc_str(value[0]) + enc_str(value[1])
    return encode_varint(len(out)) + bytes(out)


def prop(props: Sequence[Property], ident: int, default: int | str | None = None) -> object:
    return next((v for i, v in props if i == ident), default)


def packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_varint(len(body)) + body


def split_frame(buf: bytes, pos: int = 0) -> tuple[int, int, int] | None:
    """(first byte, body start, body end) of the packet at ``pos``, or None if incomplete."""
    if len(buf) - pos < 2:
        return None
    got = decode_varint(buf, pos + 1)
    if got is None:
        return None
    length, start = got
    return (buf[pos], start, start + length) if start + length <= len(buf) else None


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT topic filter matching (§4.7); wildcards at the start never match ``$`` topics."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    f_parts, t_parts = topic_filter.split("/"), topic.split("/")
    for i, part in enumerate(f_parts):
        if part == "#":
            return True
        if i >= len(t_parts) or (part != "+" and part != t_parts[i]):
            return False
    return len(f_parts) == len(t_parts)
