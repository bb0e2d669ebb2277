"""Issue 12, finding 7: the charger codec follows OCPP 1.6 JSON (units, phases, empty Heartbeat,
UUID uniqueIds, Start/StopTransaction, BootNotification), and finding 10's charger cases."""

from __future__ import annotations

import time
import uuid
from typing import Any

import msgspec
import pytest

from brokers.base import Message
from citysense.records import Envelope, Health, RecordBatch, encode
from ingest.codecs import codec_named
from ingest.codecs.base import MALFORMED, UNSUPPORTED_MESSAGE, DecodeError
from ingest.codecs.ocpp16 import METRIC_MEASURANDS
from ingest.dedupe import Deduper
from ingest.normaliser import Normalise
from ingest.profiles import PROFILES
from ingest.topics import uplink_topic

T = "2025-11-21T04:00:00.000Z"
T_NS = 1_763_697_600 * 10**9
RECEIVED = T_NS + 5 * 10**9
codec = codec_named("charger-ocpp")


def _call(action: str, body: dict[str, Any], unique_id: str = "17") -> bytes:
    return msgspec.json.encode([2, unique_id, action, body])


def _meter(*samples: dict[str, str], connector: Any = 1) -> bytes:
    return _call("MeterValues", {"connectorId": connector, "transactionId": 42,
                                 "meterValue": [{"timestamp": T, "sampledValue": list(samples)}]})


def _values(payload: bytes) -> dict[str, float]:
    out = codec.decode("chg-1", payload, RECEIVED)
    assert isinstance(out, RecordBatch), out
    assert all(r.time_ns == T_NS for r in out.readings)
    return {r.metric: r.value for r in out.readings}


def _reason(payload: bytes) -> str:
    out = codec.decode("chg-1", payload, RECEIVED)
    return out.reason_code if isinstance(out, DecodeError) else "accepted"


def test_units_are_normalised_wh_to_kwh_and_w_to_kw() -> None:
    got = _values(_meter(
        {"value": "12345", "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
        {"value": "7200", "measurand": "Power.Active.Import", "unit": "W"},
        {"value": "3.5", "measurand": "Power.Offered", "unit": "kW"},
        {"value": "300", "measurand": "Temperature", "unit": "K"},
        {"value": "50", "measurand": "SoC", "unit": "Percent", "location": "EV"}))
    assert got == {"energy_kwh": 12.345, "power_kw": 7.2, "power_offered_kw": 3.5,
                   "temperature": pytest.approx(26.85), "soc_pct": 50.0}


def test_the_default_measurand_is_the_energy_register_in_wh() -> None:
    assert _values(_meter({"value": "5000"})) == {"energy_kwh": 5.0}


def test_phases_are_kept_as_metrics_of_their_own() -> None:
    got = _values(_meter(*(
        {"value": f"{229 + i}.5", "measurand": "Voltage", "phase": p, "unit": "V"}
        for i, p in enumerate(("L1-N", "L2-N", "L3-N"))), *(
        {"value": f"{16 + i}", "measurand": "Current.Import", "phase": p, "unit": "A"}
        for i, p in enumerate(("L1", "L2", "L3")))))
    assert got == {"voltage_v_l1_n": 229.5, "voltage_v_l2_n": 230.5, "voltage_v_l3_n": 231.5,
                   "current_a_l1": 16.0, "current_a_l2": 17.0, "current_a_l3": 18.0}


def test_phased_readings_pass_validation_and_are_stored() -> None:
    payload = _meter(*({"value": "230", "measurand": "Voltage", "phase": p} for p in ("L1", "L2", "L3")))
    env = Envelope(uplink_topic("charger", "chg-1"), "chg-1", time.time_ns(), payload.replace(
        T.encode(), b"2030-01-01T00:00:00.000Z"))
    out = Normalise()(Message("raw", 0, 0, b"chg-1", encode(env), 0), Deduper(10))
    assert out.dead is None and out.batch is not None
    assert sorted(r.metric for r in out.batch.readings) == ["voltage_v_l1", "voltage_v_l2", "voltage_v_l3"]


def test_a_uuid_unique_id_is_accepted() -> None:
    out = codec.decode("chg-1", _meter({"value": "1"}, ), RECEIVED)
    assert isinstance(out, RecordBatch) and out.readings[0].seq == 17
    payload = _call("MeterValues", {"connectorId": 1, "meterValue": [
        {"timestamp": T, "sampledValue": [{"value": "1000", "unit": "Wh"}]}]}, str(uuid.uuid4()))
    out = codec.decode("chg-1", payload, RECEIVED)
    assert isinstance(out, RecordBatch) and out.readings[0].seq == -1 and out.readings[0].value == 1.0


def test_the_empty_heartbeat_and_a_boot_notification_mark_the_charger_seen() -> None:
    seen = RecordBatch("chg-1", RECEIVED, health=(Health("chg-1", RECEIVED),))
    assert codec.decode("chg-1", _call("Heartbeat", {}), RECEIVED) == seen
    boot = _call("BootNotification", {"chargePointVendor": "ACME", "chargePointModel": "AC-22",
                                      "firmwareVersion": "1.2.3"})
    assert codec.decode("chg-1", boot, RECEIVED) == seen
    assert _reason(_call("BootNotification", {"chargePointModel": "AC-22"})) == MALFORMED


def test_status_notification_without_a_timestamp_takes_the_received_time() -> None:
    out = codec.decode("chg-1", _call("StatusNotification", {
        "connectorId": 2, "status": "Faulted", "errorCode": "GroundFailure", "vendorErrorCode": "E17"}),
        RECEIVED)
    assert isinstance(out, RecordBatch)
    s = out.statuses[0]
    assert (s.connector, s.time_ns, s.state, s.error_code) == (2, RECEIVED, "Faulted", "GroundFailure")


def test_start_and_stop_transaction_keep_the_meter_register() -> None:
    start = _call("StartTransaction",
                  {"connectorId": 1, "idTag": "CARD-1", "meterStart": 1500, "timestamp": T})
    assert _values(start) == {"energy_kwh": 1.5}
    later = "2025-11-21T04:30:00.000Z"
    stop = _call("StopTransaction", {
        "transactionId": 42, "meterStop": 9500, "timestamp": later, "reason": "EVDisconnected",
        "transactionData": [{"timestamp": T, "sampledValue": [
            {"value": "1500", "context": "Transaction.Begin", "unit": "Wh"}]}]})
    out = codec.decode("chg-1", stop, RECEIVED)
    assert isinstance(out, RecordBatch)
    assert [(r.metric, r.value) for r in out.readings] == [("energy_kwh", 1.5), ("energy_kwh", 9.5)]
    assert _reason(stop.replace(b"EVDisconnected", b"Bored")) == MALFORMED


def test_signed_data_is_skipped_and_alone_is_unsupported() -> None:
    signed = {"value": "ab12==", "format": "SignedData"}
    assert _values(_meter(signed, {"value": "2000"})) == {"energy_kwh": 2.0}
    assert _reason(_meter({"value": "ab12==", "format": "SignedData"})) == UNSUPPORTED_MESSAGE


@pytest.mark.parametrize("sample", [
    {"value": "1", "measurand": "Voltage", "unit": "Wh"},  # a unit that does not fit
    {"value": "1", "unit": "furlongs"},
    {"value": "1", "phase": "L4"},
    {"value": "1", "context": "Whenever"},
    {"value": "1", "format": "Cooked"},
    {"value": "1", "location": "Moon"},
    {"value": "one"},
    {"value": 1},  # the schema says string
])
def test_values_outside_the_schema_are_malformed(sample: dict[str, Any]) -> None:
    assert _reason(_meter(sample)) == MALFORMED


def test_a_boolean_connector_id_is_refused() -> None:
    """Finding 10: bool is an int subclass in Python; it passed and failed in the writer."""
    assert _reason(_meter({"value": "1"}, connector=True)) == MALFORMED
    status = {"connectorId": True, "status": "Available", "errorCode": "NoError", "timestamp": T}
    assert _reason(_call("StatusNotification", status)) == MALFORMED


def test_json_nested_five_thousand_deep_is_malformed_not_an_error() -> None:
    deep = b"[" * 5000 + b"]" * 5000
    assert _reason(b'[2,"1","MeterValues",{"x":' + deep + b"}]") == MALFORMED
    assert _reason(b'[2,"1","MeterValues",' + deep + b"]") == MALFORMED


def test_one_metric_twice_at_one_time_keeps_the_last_and_is_counted() -> None:
    before = codec.conflicts
    got = _values(_meter({"value": "1000"}, {"value": "1000"}, {"value": "2000"}))
    assert got == {"energy_kwh": 2.0}
    assert codec.conflicts == before + 1  # the identical repeat is not a conflict


def test_the_profile_and_the_codec_agree_on_metrics() -> None:
    assert {m.name for m in PROFILES["charger"].metrics} == set(METRIC_MEASURANDS)


def test_a_field_the_schema_does_not_have_is_refused() -> None:
    """additionalProperties: false. A key garbled in transit ("timestamp" with one byte flipped)
    must not turn into a status at the received time."""
    status = {"connectorId": 1, "status": "Charging", "errorCode": "NoError", "timest\u00e1mp": T}
    assert _reason(_call("StatusNotification", status)) == MALFORMED
    assert _reason(_call("Heartbeat", {"timestamp": T})) == MALFORMED
    assert _reason(_meter({"value": "1", "colour": "blue"})) == MALFORMED
