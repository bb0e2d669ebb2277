"""The embedded broker's codec, topic matching and ACL, without sockets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from brokers.exceptions import MqttProtocolError
from brokers.mqtt_broker import packets as p
from brokers.mqtt_broker.access import Access, may_subscribe, may_write
from brokers.mqtt_broker.exceptions import ProtocolError
from brokers.mqtt_broker.topics import covers, split_shared, valid_filter
from brokers.mqtt_wire import decode_varint, topic_matches
from simulators.scenario_registry import mosquitto_hash


@given(st.text(st.characters(blacklist_characters="+#\x00", blacklist_categories=["Cs"]), min_size=1,
               max_size=50),
       st.binary(max_size=300), st.sampled_from([0, 1]), st.sampled_from([4, 5]))
def test_publish_round_trip(topic: str, payload: bytes, qos: int, version: int) -> None:
    msg = p.Publish(topic, payload, qos, raw_properties=b"\x02\x01\x01" if version == 5 else b"\x00")
    raw = p.publish(msg, qos, 7 if qos else 0, version)
    length, start = decode_varint(raw, 1) or (0, 0)
    got = p.parse_publish(raw[0] & 0x0F, raw[start:start + length], version)
    assert (got.topic, got.payload, got.qos) == (topic, payload, qos)
    assert got.packet_id == (7 if qos else 0)
    assert got.raw_properties == (msg.raw_properties if version == 5 else b"\x00")


@pytest.mark.parametrize(("body", "reason"), [
    (b"\x00\x04MQTT\x03\x02\x00\x3c\x00\x01a", 0x84),  # protocol level 3
    (b"\x00\x04MQTT\x04\x03\x00\x3c\x00\x01a", p.MALFORMED),  # reserved flag
    (b"\x00\x04MQTT\x04\x02\x00", None),  # truncated: the wire layer's error (closed with 0x81)
    (b"\x00\x04MQTT\x05\x02\x00\x3c\x02\x7f\x00\x00\x01a", None),  # unknown property 0x7f
])
def test_bad_connect_is_refused_with_a_reason(body: bytes, reason: int | None) -> None:
    with pytest.raises(MqttProtocolError) as err:
        p.parse_connect(body)
    assert getattr(err.value, "reason", None) == reason


def test_publish_with_wildcard_topic_or_qos3_is_refused() -> None:
    with pytest.raises(ProtocolError):
        p.parse_publish(0x02, b"\x00\x03a/+\x00\x01x", 4)
    with pytest.raises(ProtocolError):
        p.parse_publish(0x06, b"\x00\x01a\x00\x01x", 4)
    with pytest.raises(ProtocolError):  # QoS 1 needs a packet id other than 0
        p.parse_publish(0x02, b"\x00\x01a\x00\x00x", 4)


@pytest.mark.parametrize(("topic_filter", "topic", "expected"), [
    ("devices/#", "devices/air/a1/up", True),
    ("devices/#", "devices", True),
    ("devices/+/+/up", "devices/air/a1/up", True),
    ("devices/+/+/up", "devices/air/a1/down", False),
    ("devices/+/up", "devices/air/a1/up", False),
    ("#", "$SYS/broker/load", False),
    ("+/broker/load", "$SYS/broker/load", False),
    ("$SYS/#", "$SYS/broker/load", True),
])
def test_matches(topic_filter: str, topic: str, expected: bool) -> None:
    assert topic_matches(topic_filter, topic) is expected


def test_filters_and_shared_names() -> None:
    assert valid_filter("a/+/#") and not valid_filter("a/#/b") and not valid_filter("a/b+")
    assert split_shared("$share/g/devices/+/+/up") == ("g", "devices/+/+/up")
    assert split_shared("devices/#") == (None, "devices/#")
    with pytest.raises(ValueError):
        split_shared("$share/g")


@pytest.mark.parametrize(("rule", "topic_filter", "expected"), [
    ("devices/#", "devices/+/+/up", True),
    ("devices/+/a1/down", "devices/+/a1/down", True),
    ("devices/+/a1/down", "devices/+/+/down", False),  # a device must not read others' topics
    ("devices/+/a1/down", "devices/#", False),
    ("devices/air/a1/down", "devices/+/a1/down", False),
])
def test_covers(rule: str, topic_filter: str, expected: bool) -> None:
    assert covers(rule, topic_filter) is expected


def _access() -> Access:
    access = Access(passwords={"a1": mosquitto_hash("pw", b"0123456789ab")})
    access.load_acl(["user citysense-bridge", "topic read devices/#",
                     "pattern write devices/+/%u/up", "pattern read devices/+/%u/down"])
    return access


def test_passwords_and_acl() -> None:
    access = _access()
    assert access.authenticate("a1", b"pw")
    assert access.authenticate("a1", b"pw")  # the cached success
    assert not access.authenticate("a1", b"wrong")
    assert not access.authenticate("nobody", b"pw")
    assert not access.authenticate(None, None)
    rules = access.rules_for("a1", "client-1")
    assert may_write(rules, "devices/air/a1/up")
    assert not may_write(rules, "devices/air/a2/up")
    assert not may_subscribe(rules, "devices/#")
    assert may_subscribe(rules, "devices/air/a1/down")
    bridge = access.rules_for("citysense-bridge", "b")
    assert may_subscribe(bridge, "devices/+/+/up") and not may_write(bridge, "devices/air/b/up")


def test_a_username_with_wildcards_gets_no_pattern_rights() -> None:
    rules = _access().rules_for("+", "c")  # "devices/+/+/up" would let it write every device's topic
    assert not may_write(rules, "devices/air/a1/up")


def test_bound_client_ids() -> None:
    access = _access()
    assert access.client_id_allowed("a1", "other")  # not bound unless asked
    access.free_client_ids = frozenset({"citysense-bridge"})
    assert access.client_id_allowed("a1", "a1")
    assert not access.client_id_allowed("a1", "a2")  # could take over a2's session
    assert access.client_id_allowed("citysense-bridge", "bridge-7")  # service accounts choose theirs
