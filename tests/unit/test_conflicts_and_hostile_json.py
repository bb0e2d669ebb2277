"""Issue 12, finding 10 at the normaliser: booleans are not connector ids, conflicting duplicates
inside an uplink are counted (the last wins), 5,000-deep JSON is malformed, not an internal error."""

from __future__ import annotations

import time

import msgspec
import pytest

from brokers.base import Message
from citysense.records import Envelope, RecordBatch, Status, encode
from ingest.dedupe import Deduper
from ingest.normaliser import Normalise, Outcome
from ingest.profiles import PROFILES
from ingest.topics import uplink_topic
from ingest.validate import profile_bounds, validate

DEEP = b"[" * 5000 + b"]" * 5000


def _normalise(kind: str, device: str, payload: bytes, normalise: Normalise | None = None) -> Outcome:
    env = Envelope(uplink_topic(kind, device), device, time.time_ns(), payload)
    return (normalise or Normalise())(Message("raw", 0, 3, device.encode(), encode(env), 0), Deduper(100))


def _ts() -> int:
    return time.time_ns() // 1_000_000 - 60_000


def test_a_key_twice_with_other_values_keeps_the_last_and_is_counted() -> None:
    payload = b'{"ts": %d, "m": {"pm25": 10.0, "pm10": 20.0, "pm25": 12.5}, "seq": 4}' % _ts()
    out = _normalise("air", "air-1", payload)
    assert out.batch is not None and out.dead is None
    assert {r.metric: r.value for r in out.batch.readings} == {"pm25": 12.5, "pm10": 20.0}
    assert out.conflicts == 1


def test_a_key_twice_with_the_same_value_is_no_conflict_and_plain_uplinks_cost_nothing() -> None:
    same = b'{"ts": %d, "m": {"pm25": 10.0, "pm25": 10.0}, "seq": 5}' % _ts()
    assert _normalise("air", "air-1", same).conflicts == 0
    plain = b'{"ts":%d,"m":{"pm25":10.0,"pm10":20.0}}' % _ts()
    assert _normalise("air", "air-1", plain).conflicts == 0


def test_charger_sampled_values_twice_are_counted_too() -> None:
    t = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() - 60))
    body = {"connectorId": 1, "meterValue": [{"timestamp": t, "sampledValue": [
        {"value": "230", "measurand": "Voltage"}, {"value": "231", "measurand": "Voltage"}]}]}
    out = _normalise("charger", "chg-1", msgspec.json.encode([2, "9", "MeterValues", body]))
    assert out.batch is not None and [r.value for r in out.batch.readings] == [231.0]
    assert out.conflicts == 1


@pytest.mark.parametrize(("kind", "payload"), [
    ("air", DEEP),
    ("air", b'{"ts": 1, "m": {"pm25": ' + DEEP + b"}}"),
    ("air", b'{"ts": 1, "m": {}, "x": ' + DEEP + b"}"),
    ("charger", DEEP),
    ("charger", b'[2, "1", "Heartbeat", ' + DEEP + b"]"),
    ("charger", b'[2, "1", "MeterValues", {"meterValue": ' + DEEP + b"}]"),
])
def test_json_five_thousand_deep_is_malformed(kind: str, payload: bytes) -> None:
    out = _normalise(kind, f"{kind}-1", payload)
    assert out.dead is not None and out.dead.reason_code == "malformed", out.dead


def test_a_boolean_connector_never_leaves_the_normaliser() -> None:
    status = Status("chg-1", True, time.time_ns(), "Available")  # type: ignore[arg-type]
    kept, rejected = validate("charger", profile_bounds(PROFILES["charger"]),
                              RecordBatch("chg-1", 0, statuses=(status,)))
    assert kept.statuses == () and [r.reason for r in rejected] == ["out_of_range"]
    body = {"connectorId": True, "status": "Available", "errorCode": "NoError"}
    out = _normalise("charger", "chg-1", msgspec.json.encode([2, "1", "StatusNotification", body]))
    assert out.batch is None and out.dead is not None and out.dead.reason_code == "malformed"
