"""A corpus of hostile uplinks, each with what must become of it, and the good uplinks around them.

``corpus(token, now_ns)`` returns cases: a kind, a device id, a payload and the
dead-letter reason the pipeline must give it, or ``None`` with the readings it
must store (accepted on purpose: SQL text that is only text, a corrected clock,
a key given twice). ``good(token, i, now_ns)`` is an ordinary uplink of a device
of this run. Device ids carry ``token``, so a run's records can be told apart on
shared services. Used by ``test_bad_input_corpus.py`` twice: over the normaliser
alone (no services, fast) and through the real pipeline.
"""

from __future__ import annotations

import binascii
import struct
from dataclasses import dataclass, field

import msgspec

from citysense.records import Health, Reading, RecordBatch
from ingest.codecs import codec_named
from ingest.codecs.charger_ocpp import iso_ms
from ingest.codecs.nbiot_frame import crc16

NS = 1_000_000_000
DAY = 86_400 * NS
Stored = frozenset[tuple[str, str, float]]  # (device, metric, value); times are checked separately


@dataclass(frozen=True)
class Case:
    name: str
    kind: str
    device: str
    payload: bytes
    reason: str | None  # the dead-letter reason; None: accepted
    stores: Stored = field(default_factory=frozenset)  # readings it must store (mixed or accepted)
    via_device_login: str = ""  # published with this device's own login instead of the load generator's
    refused_by_broker: bool = False

    @property
    def topic(self) -> str:
        return f"devices/{self.kind}/{self.device}/up"


def _cat1(seq: int, ts_ms: int, values: dict[str, object]) -> bytes:
    return msgspec.json.encode({"ts": ts_ms, "m": values, "seq": seq})


def _ocpp(action: str, body: object, unique_id: str = "7") -> bytes:
    return msgspec.json.encode([2, unique_id, action, body])


def _frame(device: str, t_ns: int, seq: int = 3) -> bytes:
    readings = (Reading(device, "pm25", t_ns, 21.5, 0, seq), Reading(device, "noise_dba", t_ns, 48.0, 0, seq))
    return codec_named("nbiot-frame").encode(RecordBatch(device, 0, readings, (), (Health(device, t_ns),)))


def _with_crc(body: bytes) -> bytes:
    return body + struct.pack(">H", crc16(body))


def good(token: str, i: int, now_ns: int) -> tuple[str, str, bytes, Stored, int]:
    """(kind, device, payload, readings it stores, their time in ns) of a good uplink."""
    device = f"air-{token}-g{i:03d}"
    t = (now_ns - 120 * NS) // 1_000_000 * 1_000_000 - i * 1_000_000
    values = {"pm25": 10.0 + i % 50, "pm10": 20.5, "temperature": 17.25}
    stores = frozenset((device, m, v) for m, v in values.items())
    return "air", device, _cat1(i, t // 1_000_000, dict(values)), stores, t


def corpus(token: str, now_ns: int) -> list[Case]:
    t = (now_ns - 60 * NS) // NS * NS
    ts = t // 1_000_000
    d = f"x{token}"  # device-id stem of this run's hostile devices
    frame = _frame(f"env-{d}", t)
    iso = iso_ms(t)
    meter = {"connectorId": 1, "meterValue": [{"timestamp": iso, "sampledValue": [{"value": "1"}]}]}
    deep = b"[" * 5000 + b"]" * 5000
    one = _cat1(1, ts, {"pm25": 1.0})
    cases = [
        # NB-IoT frames
        Case("nbiot truncated", "env", f"env-{d}-1", frame[: len(frame) // 2], "truncated"),
        Case("nbiot bad CRC", "env", f"env-{d}-2", frame[:-1] + bytes([frame[-1] ^ 0xFF]), "bad_crc"),
        Case("nbiot unknown version", "env", f"env-{d}-3", b"\x07" + frame[1:], "unsupported_version"),
        Case("nbiot unknown tag", "env", f"env-{d}-4", _with_crc(
            b"\x01\x00" + struct.pack(">IIB", 9, t // NS, 1) + b"\x00\x00\x01\x7f\x01\x05"),
             "unknown_metric"),
        Case("nbiot zero base time", "env", f"env-{d}-5", _with_crc(
            b"\x01\x00" + struct.pack(">IIB", 9, 0, 1) + b"\x00\x00\x01\x01\x01\x05"), "bad_timestamp"),
        # not hex, so read as a raw frame: its first byte, "0", is no frame version
        Case("nbiot hex with non-hex text", "rain", f"rain-{d}-6", b"01zz" + binascii.hexlify(frame)[4:],
             "unsupported_version"),
        Case("nbiot empty payload", "env", f"env-{d}-7", b"", "truncated"),
        # Cat1 JSON: types, values, times
        Case("cat1 ts is text", "air", f"air-{d}-8", b'{"seq": 1, "ts": "soon", "m": {"pm25": 1}}',
             "malformed"),
        Case("cat1 value is text", "air", f"air-{d}-9", _cat1(1, ts, {"pm25": "high"}), "malformed"),
        Case("cat1 infinite value", "air", f"air-{d}-10", b'{"ts": %d, "m": {"pm25": 1e999}}' % ts,
             "malformed"),
        Case("cat1 NaN literal", "air", f"air-{d}-11", b'{"ts": %d, "m": {"pm25": NaN}}' % ts, "malformed"),
        Case("cat1 absurd value", "air", f"air-{d}-12", _cat1(1, ts, {"humidity": -1e300}), "out_of_range"),
        Case("cat1 seq beyond u32", "air", f"air-{d}-13", _cat1(2**40, ts, {"pm25": 1.0}), "malformed"),
        Case("cat1 zero ts", "air", f"air-{d}-14", _cat1(1, 0, {"pm25": 1.0}), "bad_timestamp"),
        Case("cat1 beyond retention", "air", f"air-{d}-15", _cat1(1, ts - 100 * DAY // 1_000_000,
                                                                  {"pm25": 1.0}), "beyond_retention"),
        Case("cat1 empty readings", "air", f"air-{d}-16", _cat1(1, ts, {}), "malformed"),
        Case("cat1 empty payload", "air", f"air-{d}-17", b"", "malformed"),
        Case("cat1 invalid UTF-8", "air", f"air-{d}-18", b'{"ts": %d, "m": {"pm\xff": 1.0}}' % ts,
             "malformed"),
        Case("cat1 oversize payload", "air", f"air-{d}-19", b'{"pad": "' + b"x" * 70_000 + b'"}', "oversize"),
        Case("cat1 nested 5000 deep", "air", f"air-{d}-20", b'{"ts": 1, "m": {}, "x": ' + deep + b"}",
             "malformed"),
        Case("cat1 unknown metric beside a good one", "air", f"air-{d}-21",
             _cat1(1, ts, {"rpm": 3.0, "pm25": 11.0}), "unknown_metric",
             frozenset({(f"air-{d}-21", "pm25", 11.0)})),
        Case("cat1 one out of range beside good ones", "air", f"air-{d}-22",
             _cat1(1, ts, {"pm25": 5000.0, "pm10": 30.0, "o3": 40.0}), "out_of_range",
             frozenset({(f"air-{d}-22", "pm10", 30.0), (f"air-{d}-22", "o3", 40.0)})),
        Case("cat1 SQL in a metric name", "air", f"air-{d}-23",
             _cat1(1, ts, {"pm25'); DROP TABLE readings; --": 1.0}), "unknown_metric"),
        Case("wrong profile: Cat1 JSON on an NB-IoT kind", "env", f"env-{d}-24", _cat1(1, ts, {"pm25": 1.0}),
             "unsupported_version"),
        Case("wrong profile: a frame on a Cat1 kind", "air", f"air-{d}-25", frame, "malformed"),
        # ids and topics
        Case("overlong device id", "air", "air-" + "q" * 3000 + d, one, "bad_device_id"),
        Case("fullwidth unicode device id", "air", f"ａｉｒ-{d}", one, "bad_device_id"),
        Case("zero-width space in the id", "air", f"air-{d}\u200b", one, "bad_device_id"),
        Case("SQL in the device id", "air", f"air-{d}';DROP TABLE readings;--", one, "bad_device_id"),
        Case("unknown kind", "volcano", f"volc-{d}", b"{}", "unknown_profile"),
        Case("another device's topic", "air", f"air-{d}-26", one, None,
             via_device_login="air-0099", refused_by_broker=True),
        # OCPP 1.6
        Case("ocpp boolean connectorId", "charger", f"chg-{d}-27",
             _ocpp("MeterValues", meter | {"connectorId": True}), "malformed"),
        Case("ocpp unknown action", "charger", f"chg-{d}-28", _ocpp("Authorize", {"idTag": "A"}),
             "unsupported_message"),
        Case("ocpp CALLRESULT", "charger", f"chg-{d}-29", msgspec.json.encode([3, "7", {}]), "malformed"),
        Case("ocpp unit that does not fit", "charger", f"chg-{d}-30", _ocpp("MeterValues", {
            "connectorId": 1, "meterValue": [{"timestamp": iso, "sampledValue": [
                {"value": "230", "measurand": "Voltage", "unit": "Wh"}]}]}), "malformed"),
        Case("ocpp NUL in info", "charger", f"chg-{d}-31", _ocpp("StatusNotification", {
            "connectorId": 1, "status": "Available", "errorCode": "NoError", "info": "a\u0000b"}),
             "malformed"),
        Case("ocpp uniqueId of 100 characters", "charger", f"chg-{d}-32", _ocpp("Heartbeat", {}, "u" * 100),
             "malformed"),
        Case("ocpp invalid status", "charger", f"chg-{d}-33", _ocpp("StatusNotification", {
            "connectorId": 1, "status": "Dancing", "errorCode": "NoError"}), "malformed"),
        Case("ocpp NaN value", "charger", f"chg-{d}-34", _ocpp("MeterValues", {
            "connectorId": 1, "meterValue": [{"timestamp": iso, "sampledValue": [
                {"value": "NaN", "measurand": "Voltage"}, {"value": "231", "measurand": "Voltage",
                                                           "phase": "L2"}]}]}), "out_of_range",
             frozenset({(f"chg-{d}-34", "voltage_v_l2", 231.0)})),
        Case("ocpp binary garbage", "charger", f"chg-{d}-35", bytes(range(256)), "malformed"),
        Case("ocpp nested 5000 deep", "charger", f"chg-{d}-36", b'[2, "1", "Heartbeat", ' + deep + b"]",
             "malformed"),
        Case("ocpp beyond retention", "charger", f"chg-{d}-37", _ocpp("MeterValues", {
            "connectorId": 1, "meterValue": [{"timestamp": iso_ms(t - 120 * DAY), "sampledValue": [
                {"value": "100", "unit": "Wh"}]}]}), "beyond_retention"),
        # hostile but acceptable: stored exactly as sent
        Case("ocpp SQL text in info is only text", "charger", f"chg-{d}-38", _ocpp("StatusNotification", {
            "connectorId": 1, "status": "Faulted", "errorCode": "OtherError",
            "info": "'); DROP TABLE readings; --"}), None),
        Case("ocpp Wh register with a UUID uniqueId", "charger", f"chg-{d}-39", _ocpp("MeterValues", {
            "connectorId": 1, "meterValue": [{"timestamp": iso, "sampledValue": [
                {"value": "12345", "unit": "Wh"},
                {"value": "229.5", "measurand": "Voltage", "phase": "L3-N"}]}]},
            "3f2c8a9e-0d4b-4c4e-9a53-5b7a4b1e2f10"), None,
             frozenset({(f"chg-{d}-39", "energy_kwh", 12.345), (f"chg-{d}-39", "voltage_v_l3_n", 229.5)})),
        Case("ocpp empty Heartbeat", "charger", f"chg-{d}-40", _ocpp("Heartbeat", {}), None),
        Case("cat1 clock two days ahead is corrected", "air", f"air-{d}-41",
             _cat1(5, ts + 2 * DAY // 1_000_000, {"pm25": 14.0}), None,
             frozenset({(f"air-{d}-41", "pm25", 14.0)})),
        Case("cat1 a key twice: the last wins", "air", f"air-{d}-42",
             b'{"ts": %d, "m": {"pm25": 1.0, "pm25": 2.0}, "seq": 9}' % ts, None,
             frozenset({(f"air-{d}-42", "pm25", 2.0)})),
    ]
    return cases
