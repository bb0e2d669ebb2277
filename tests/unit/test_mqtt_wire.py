"""The MQTT 5 codec of the asyncio client: round trips, limits, and malformed input."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from brokers.exceptions import MqttProtocolError
from brokers.mqtt_packets import (
    Connack,
    Connect,
    Disconnect,
    Packet,
    Puback,
    Publish,
    Suback,
    Subscribe,
    decode_packet,
    encode_connack,
    encode_connect,
    encode_disconnect,
    encode_puback,
    encode_publish,
    encode_suback,
    encode_subscribe,
    parse_publish,
)
from brokers.mqtt_wire import (
    MAX_VARINT,
    PROPERTY_TYPES,
    Property,
    Reader,
    decode_varint,
    encode_properties,
    encode_varint,
    split_frame,
    topic_matches,
)

ENCODERS = {Connect: encode_connect, Connack: encode_connack, Subscribe: encode_subscribe,
            Suback: encode_suback, Publish: encode_publish, Puback: encode_puback,
            Disconnect: encode_disconnect}


def roundtrip(packet: Packet) -> Packet:
    wire = ENCODERS[type(packet)](packet)  # type: ignore[operator]
    frame = split_frame(wire)
    assert frame is not None and frame[2] == len(wire)
    return decode_packet(frame[0], wire[frame[1]:frame[2]])


@given(st.integers(0, MAX_VARINT))
def test_varint_round_trip(n: int) -> None:
    wire = encode_varint(n)
    assert decode_varint(wire, 0) == (n, len(wire))
    assert decode_varint(wire[:-1], 0) is None  # incomplete, not an error


@pytest.mark.parametrize(("n", "size"), [(0, 1), (127, 1), (128, 2), (16_383, 2), (16_384, 3),
                                         (2_097_151, 3), (2_097_152, 4), (MAX_VARINT, 4)])
def test_varint_sizes_at_the_edges(n: int, size: int) -> None:
    assert len(encode_varint(n)) == size


@pytest.mark.parametrize("n", [-1, MAX_VARINT + 1])
def test_varint_out_of_range_is_refused(n: int) -> None:
    with pytest.raises(MqttProtocolError, match="out of range"):
        encode_varint(n)


def test_a_fifth_varint_byte_is_malformed() -> None:
    with pytest.raises(MqttProtocolError, match="longer than four bytes"):
        decode_varint(b"\xff\xff\xff\xff\x01", 0)


text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


def property_value(ident: int) -> st.SearchStrategy[Property]:
    kind = PROPERTY_TYPES[ident]
    value: st.SearchStrategy[object] = {
        "b": st.integers(0, 255), "h": st.integers(0, 0xFFFF), "i": st.integers(0, 0xFFFF_FFFF),
        "v": st.integers(0, MAX_VARINT), "s": text, "d": st.binary(max_size=40),
        "p": st.tuples(text, text)}[kind]
    return value.map(lambda v: (ident, v))  # type: ignore[arg-type,return-value]


properties = st.lists(st.sampled_from(sorted(PROPERTY_TYPES)).flatmap(property_value), max_size=6).map(tuple)


@given(properties)
def test_properties_round_trip(props: tuple[Property, ...]) -> None:
    wire = encode_properties(props)
    reader = Reader(wire)
    assert tuple(reader.properties()) == props
    reader.done()


topics = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                 min_size=1, max_size=60)
pids = st.integers(1, 0xFFFF)


@given(topics, st.binary(max_size=300), st.sampled_from([0, 1]), pids, st.booleans(), st.booleans(),
       properties.map(lambda ps: tuple(p for p in ps if p[0] != 0x23)))
def test_publish_round_trip(topic: str, payload: bytes, qos: int, pid: int, retain: bool, dup: bool,
                            props: tuple[Property, ...]) -> None:
    packet = Publish(topic, payload, qos, pid if qos else 0, retain, dup, props)
    assert roundtrip(packet) == packet


@given(st.one_of(
    st.builds(Connect, text, st.none() | text, st.none() | text, st.integers(0, 0xFFFF), st.booleans(),
              properties),
    st.builds(Connack, st.booleans(), st.integers(0, 255), properties),
    st.builds(Subscribe, pids,
              st.lists(st.tuples(topics, st.integers(0, 0x3F)), min_size=1, max_size=4).map(tuple),
              properties),
    st.builds(Suback, pids, st.lists(st.integers(0, 255), min_size=1, max_size=4).map(tuple), properties),
    st.builds(Puback, pids, st.integers(0, 255), properties),
    st.builds(Disconnect, st.integers(0, 255), properties),
))
def test_control_packets_round_trip(packet: Packet) -> None:
    assert roundtrip(packet) == packet


@given(st.sampled_from([0x10, 0x20, 0x30, 0x32, 0x40, 0x82, 0x90, 0xD0, 0xE0]), st.binary(max_size=64))
def test_arbitrary_bodies_decode_or_raise_a_protocol_error(first: int, body: bytes) -> None:
    with contextlib.suppress(MqttProtocolError):  # anything else (IndexError, ...) fails the test
        decode_packet(first, body)


@given(st.data())
def test_every_truncation_of_a_packet_is_a_protocol_error(data: st.DataObject) -> None:
    packet = Publish("devices/air/a-1/up", b"{}", 1, 7, properties=((0x26, ("k", "v")),))
    wire = encode_publish(packet)
    frame = split_frame(wire)
    assert frame is not None
    cut = data.draw(st.integers(0, frame[2] - frame[1] - 3))  # shorter than topic, pid and properties
    with pytest.raises(MqttProtocolError):
        decode_packet(frame[0], wire[frame[1]:frame[1] + cut])


@pytest.mark.parametrize(("first", "body", "error"), [
    (0x36, b"\x00\x01a\x00\x01\x00", "QoS 3"),
    (0x32, b"\x00\x01a\x00\x00\x00", "packet id"),
    (0x30, b"\x00\x00\x00", "without a topic"),
    (0x30, b"\x00\x02\xff\xfe\x00", "not UTF-8"),
    (0x30, b"\x00\x01a\x03\x23\x00\x01", "topic alias"),
    (0x30, b"\x00\x01a\x02\x7f\x00", "unknown property"),
    (0x30, b"\x00\x01a\x05\x01\x00", "properties longer"),
    (0x90, b"\x00\x01\x00", "without a reason code"),
    (0x20, b"\x00\x00\x00\x99", "unexpected bytes"),
    (0x50, b"\x00\x01", "unsupported packet type"),
])
def test_malformed_packets_say_what_is_wrong(first: int, body: bytes, error: str) -> None:
    with pytest.raises(MqttProtocolError, match=error):
        decode_packet(first, body)


def test_frames_split_only_when_complete() -> None:
    wire = encode_publish(Publish("t", b"x" * 200, 1, 1))  # a two-byte remaining length
    assert split_frame(wire[:1]) is None and split_frame(wire[:2]) is None
    assert split_frame(wire[:-1]) is None
    assert split_frame(wire + b"\xc0") == (0x32, 3, len(wire))
    assert parse_publish(wire, 0x32, 3, len(wire)) == ("t", b"x" * 200, 1, 1)


@pytest.mark.parametrize(("topic_filter", "topic", "expected"), [
    ("$SYS/#", "$SYS/broker/heap/current", True),
    ("#", "$SYS/broker/heap/current", False),
    ("+/broker", "$SYS/broker", False),
    ("devices/+/+/up", "devices/air/a-1/up", True),
    ("devices/+/+/up", "devices/air/a-1/down", False),
    ("devices/#", "devices", True),
    ("a/+", "a/b/c", False),
    ("a/b", "a/b", True),
])
def test_topic_filters(topic_filter: str, topic: str, expected: bool) -> None:
    assert topic_matches(topic_filter, topic) is expected
