"""MQTT 5 packets a subscribing client needs (OASIS MQTT 5.0 §3), encoded and decoded.

Client → server: CONNECT, SUBSCRIBE, PUBLISH (QoS 0/1), PUBACK, PINGREQ, DISCONNECT.
Server → client: CONNACK, SUBACK, PUBLISH, PUBACK, PINGRESP, DISCONNECT. The client's own
packets decode too, so tests can play the broker. ``parse_publish`` is the receive hot path:
a tuple, no packet object, properties skipped when there are none.
"""

from __future__ import annotations

from dataclasses import dataclass

from brokers.exceptions import MqttProtocolError
from brokers.mqtt_wire import (
    CONNACK,
    CONNECT,
    DISCONNECT,
    PINGREQ_TYPE,
    PINGRESP,
    PUBACK,
    PUBLISH,
    SUBACK,
    SUBSCRIBE,
    TOPIC_ALIAS,
    U16,
    Property,
    Reader,
    enc_bin,
    enc_str,
    encode_properties,
    packet,
)


# -- packets -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Connect:
    client_id: str
    username: str | None = None
    password: str | None = None
    keepalive: int = 60
    clean_start: bool = True
    properties: tuple[Property, ...] = ()


@dataclass(frozen=True, slots=True)
class Connack:
    session_present: bool
    reason_code: int
    properties: tuple[Property, ...] = ()


@dataclass(frozen=True, slots=True)
class Subscribe:
    packet_id: int
    filters: tuple[tuple[str, int], ...]  # (topic filter, options byte)
    properties: tuple[Property, ...] = ()


@dataclass(frozen=True, slots=True)
class Suback:
    packet_id: int
    reason_codes: tuple[int, ...]
    properties: tuple[Property, ...] = ()


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str
    payload: bytes
    qos: int = 0
    packet_id: int = 0
    retain: bool = False
    dup: bool = False
    properties: tuple[Property, ...] = ()


@dataclass(frozen=True, slots=True)
class Puback:
    packet_id: int
    reason_code: int = 0
    properties: tuple[Property, ...] = ()


@dataclass(frozen=True, slots=True)
class Disconnect:
    reason_code: int = 0
    properties: tuple[Property, ...] = ()


@dataclass(frozen=True, slots=True)
class Ping:
    response: bool


Packet = Connect | Connack | Subscribe | Suback | Publish | Puback | Disconnect | Ping


def encode_connect(p: Connect) -> bytes:
    flags = (0x02 if p.clean_start else 0) | (0x80 if p.username is not None else 0)
    flags |= 0x40 if p.password is not None else 0
    body = enc_str("MQTT") + bytes((5, flags)) + U16.pack(p.keepalive) + encode_properties(p.properties)
    body += enc_str(p.client_id)
    body += enc_str(p.username) if p.username is not None else b""
    body += enc_bin(p.password.encode()) if p.password is not None else b""
    return packet(CONNECT, body)


def encode_connack(p: Connack) -> bytes:
    return packet(CONNACK, bytes((int(p.session_present), p.reason_code)) + encode_properties(p.properties))


def encode_subscribe(p: Subscribe) -> bytes:
    if not p.filters:
        raise MqttProtocolError("SUBSCRIBE without a topic filter")
    body = U16.pack(p.packet_id) + encode_properties(p.properties)
    body += b"".join(enc_str(f) + bytes((opts,)) for f, opts in p.filters)
    return packet(SUBSCRIBE | 0x02, body)


def encode_suback(p: Suback) -> bytes:
    return packet(SUBACK, U16.pack(p.packet_id) + encode_properties(p.properties) + bytes(p.reason_codes))


def encode_publish(p: Publish) -> bytes:
    if p.qos not in (0, 1, 2) or (p.qos and not 0 < p.packet_id <= 0xFFFF):
        raise MqttProtocolError(f"PUBLISH QoS {p.qos} with packet id {p.packet_id}")
    first = PUBLISH | (0x08 if p.dup else 0) | (p.qos << 1) | (0x01 if p.retain else 0)
    body = enc_str(p.topic) + (U16.pack(p.packet_id) if p.qos else b"") + encode_properties(p.properties)
    return packet(first, body + p.payload)


def encode_puback(p: Puback) -> bytes:
    if p.reason_code == 0 and not p.properties:
        return b"\x40\x02" + U16.pack(p.packet_id)  # the short form (§3.4.2.1)
    return packet(PUBACK, U16.pack(p.packet_id) + bytes((p.reason_code,)) + encode_properties(p.properties))


def encode_disconnect(p: Disconnect) -> bytes:
    if p.reason_code == 0 and not p.properties:
        return b"\xe0\x00"
    return packet(DISCONNECT, bytes((p.reason_code,)) + encode_properties(p.properties))


def parse_publish(buf: bytes, first: int, start: int, end: int) -> tuple[str, bytes, int, int]:
    """(topic, payload, qos, packet id) of the PUBLISH body ``buf[start:end]``; the hot path."""
    qos = (first >> 1) & 0x03
    if qos == 3:
        raise MqttProtocolError("PUBLISH with QoS 3")
    if end - start < 3:
        raise MqttProtocolError("PUBLISH shorter than its fields")
    pos = start + 2 + ((buf[start] << 8) | buf[start + 1])
    try:
        topic = buf[start + 2:pos].decode()
    except UnicodeDecodeError as exc:
        raise MqttProtocolError(f"PUBLISH topic is not UTF-8: {exc}") from exc
    pid = 0
    if qos:
        pid = (buf[pos] << 8) | buf[pos + 1] if pos + 2 <= end else -1
        pos += 2
        if pid <= 0:
            raise MqttProtocolError("PUBLISH QoS > 0 without a valid packet id")
    if pos >= end:
        raise MqttProtocolError("PUBLISH ends before its properties")
    if buf[pos] == 0:  # no properties: what Mosquitto sends for a device's plain uplink
        pos += 1
    else:
        reader = Reader(buf, pos, end)
        for ident, _ in reader.properties():
            if ident == TOPIC_ALIAS:  # we announce no Topic Alias Maximum: the server may not
                raise MqttProtocolError("PUBLISH with a topic alias the client never allowed")
        pos = reader.pos
    if not topic:
        raise MqttProtocolError("PUBLISH without a topic name")
    return topic, buf[pos:end], qos, pid


def decode_packet(first: int, body: bytes) -> Packet:
    """One complete packet (its first byte and the body after the remaining length)."""
    kind, r = first & 0xF0, Reader(body)
    if kind == PUBLISH:
        topic, payload, qos, pid = parse_publish(body, first, 0, len(body))
        props = _publish_properties(body, qos)
        return Publish(topic, payload, qos, pid, bool(first & 0x01), bool(first & 0x08), props)
    if kind in (PINGREQ_TYPE, PINGRESP):
        r.done()
        return Ping(kind == PINGRESP)
    if kind == CONNACK:
        flags, code = r.byte(), r.byte()
        packet: Packet = Connack(bool(flags & 0x01), code, tuple(r.properties()))
    elif kind == PUBACK:
        pid = r.u16()
        code = r.byte() if r.pos < r.end else 0
        packet = Puback(pid, code, tuple(r.properties()) if r.pos < r.end else ())
    elif kind == SUBACK:
        pid, props = r.u16(), tuple(r.properties())
        packet = Suback(pid, tuple(r.take(r.end - r.pos)), props)
        if not packet.reason_codes:
            raise MqttProtocolError("SUBACK without a reason code")
    elif kind == DISCONNECT:
        code = r.byte() if r.pos < r.end else 0
        packet = Disconnect(code, tuple(r.properties()) if r.pos < r.end else ())
    elif kind == CONNECT:
        packet = _decode_connect(r)
    elif kind == SUBSCRIBE:
        pid, props = r.u16(), tuple(r.properties())
        filters: list[tuple[str, int]] = []
        while r.pos < r.end:
            filters.append((r.string(), r.byte()))
        if not filters:
            raise MqttProtocolError("SUBSCRIBE without a topic filter")
        packet = Subscribe(pid, tuple(filters), props)
    else:
        raise MqttProtocolError(f"unsupported packet type {kind >> 4}")
    r.done()
    return packet


def _publish_properties(body: bytes, qos: int) -> tuple[Property, ...]:
    r = Reader(body)
    r.take(r.u16() + (2 if qos else 0))
    return tuple(r.properties())


def _decode_connect(r: Reader) -> Connect:
    if r.string() != "MQTT" or r.byte() != 5:
        raise MqttProtocolError("CONNECT is not MQTT 5")
    flags, keepalive, props = r.byte(), r.u16(), tuple(r.properties())
    client_id = r.string()
    username = r.string() if flags & 0x80 else None
    password = r.binary().decode(errors="replace") if flags & 0x40 else None
    return Connect(client_id, username, password, keepalive, bool(flags & 0x02), props)


