"""EV charger uplinks: OCPP 1.6-J style CALL messages as JSON, one per uplink.

A charge pile (one device, connector 1 unless stated) sends the OCPP-J CALL
array ``[2, "<uniqueId>", "<Action>", {payload}]`` where ``uniqueId`` is the
pile's uplink counter as a decimal string (it becomes ``Reading.seq``)::

    [2, "17", "StatusNotification", {"connectorId": 1, "status": "Charging",
        "errorCode": "NoError", "timestamp": "2025-01-01T08:00:00.000Z",
        "transactionId": "S-chg-00012-3", "info": "start:Local"}]
    [2, "18", "MeterValues", {"connectorId": 1, "transactionId": "S-chg-00012-3",
        "meterValue": [{"timestamp": "...", "sampledValue": [
            {"value": "7.2", "measurand": "Power.Active.Import", "unit": "kW"}, ...]}]}]
    [2, "19", "Heartbeat", {"timestamp": "..."}]

``StatusNotification`` becomes a :class:`~citysense.records.Status`
(``transactionId`` -> ``session_id``; ``info`` -> ``info``, which carries the
session start or stop reason, e.g. ``start:Remote``, ``stop:EVDisconnected``).
``MeterValues`` become readings (measurands in :data:`MEASURANDS`).
``Heartbeat`` becomes a :class:`~citysense.records.Health` with no radio
fields: a liveness mark. Timestamps are ISO 8601 UTC with
milliseconds, as OCPP sends them.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec

from citysense.records import Health, Reading, RecordBatch, Status
from ingest.codecs.base import (
    BAD_TIMESTAMP,
    MALFORMED,
    MAX_PAYLOAD_BYTES,
    MAX_SEQ,
    OVERSIZE,
    UNKNOWN_METRIC,
    UNSUPPORTED_MESSAGE,
    DecodeError,
    is_clean_text,
)

# OCPP connectorId: 0 is the charge point itself, then 1..n; real piles have a handful.
MAX_CONNECTOR = 255

STATES = (
    "Available", "Preparing", "Charging", "SuspendedEV", "SuspendedEVSE",
    "Finishing", "Reserved", "Unavailable", "Faulted",
)
ERROR_CODES = (
    "ConnectorLockFailure", "EVCommunicationError", "GroundFailure", "HighTemperature",
    "InternalError", "LocalListConflict", "NoError", "OtherError", "OverCurrentFailure",
    "PowerMeterFailure", "PowerSwitchFailure", "ReaderFailure", "ResetFailure",
    "UnderVoltage", "OverVoltage", "WeakSignal",
)
STOP_REASONS = (
    "DeAuthorized", "EVDisconnected", "EmergencyStop", "HardReset", "Local", "Other",
    "PowerLoss", "Reboot", "Remote", "SoftReset", "UnlockCommand",
)
# OCPP measurand -> (metric, unit)
MEASURANDS: dict[str, tuple[str, str]] = {
    "Power.Active.Import": ("power_kw", "kW"),
    "Energy.Active.Import.Register": ("energy_kwh", "kWh"),
    "Voltage": ("voltage_v", "V"),
    "Current.Import": ("current_a", "A"),
    "SoC": ("soc_pct", "Percent"),
}
METRIC_MEASURANDS: dict[str, tuple[str, str]] = {m: (k, u) for k, (m, u) in MEASURANDS.items()}
_STATES = frozenset(STATES)
_ERRORS = frozenset(ERROR_CODES)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(tuple[int, str, str, dict[str, Any]])


_DAYS: dict[int, str] = {}


def iso_ms(time_ns: int) -> str:
    """``2025-01-01T08:00:00.123Z``: the date part is formatted once per day and cached."""
    seconds, ms = divmod(time_ns // 1_000_000, 1000)
    day, second = divmod(seconds, 86_400)
    date = _DAYS.get(day)
    if date is None:
        if len(_DAYS) >= 4096:
            _DAYS.clear()
        date = _DAYS[day] = (_EPOCH + dt.timedelta(days=day)).strftime("%Y-%m-%dT")
    hour, second = divmod(second, 3600)
    minute, second = divmod(second, 60)
    return f"{date}{hour:02d}:{minute:02d}:{second:02d}.{ms:03d}Z"


def parse_iso_ns(text: object) -> int | None:
    if not isinstance(text, str):
        return None
    try:
        stamp = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if stamp.tzinfo is None:
        return None
    delta = stamp - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def call(seq: int, action: str, body: dict[str, Any]) -> bytes:
    return _encoder.encode([2, str(seq), action, body])


def status_call(seq: int, status: Status) -> bytes:
    body: dict[str, Any] = {
        "connectorId": status.connector, "status": status.state,
        "errorCode": status.error_code, "timestamp": iso_ms(status.time_ns),
    }
    if status.session_id:
        body["transactionId"] = status.session_id
    if status.info:
        body["info"] = status.info
    return call(seq, "StatusNotification", body)


def meter_call(
    seq: int, readings: tuple[Reading, ...], connector: int = 1, session_id: str = ""
) -> bytes:
    by_time: dict[int, list[dict[str, str]]] = {}
    for r in readings:
        try:
            measurand, unit = METRIC_MEASURANDS[r.metric]
        except KeyError:
            raise ValueError(f"no OCPP measurand for metric {r.metric!r}") from None
        by_time.setdefault(r.time_ns, []).append(
            {"value": repr(r.value), "measurand": measurand, "unit": unit})
    body: dict[str, Any] = {
        "connectorId": connector,
        "meterValue": [{"timestamp": iso_ms(t), "sampledValue": sv} for t, sv in by_time.items()],
    }
    if session_id:
        body["transactionId"] = session_id
    return call(seq, "MeterValues", body)


class ChargerOcppCodec:
    name = "charger-ocpp"

    def encode(self, batch: RecordBatch) -> bytes:
        """One CALL: a status if the batch has one, else its meter values, else a heartbeat."""
        if batch.statuses:
            if len(batch.statuses) > 1 or batch.readings:
                raise ValueError("a charger uplink carries one status or meter values, not both")
            return status_call(_seq(batch), batch.statuses[0])
        if batch.readings:
            return meter_call(_seq(batch), batch.readings)
        if len(batch.health) == 1:
            return call(_seq(batch), "Heartbeat", {"timestamp": iso_ms(batch.health[0].time_ns)})
        raise ValueError("empty charger uplink")

    def decode(self, device_id: str, payload: bytes, received_ns: int) -> RecordBatch | DecodeError:
        if len(payload) > MAX_PAYLOAD_BYTES:
            return DecodeError(OVERSIZE, f"{len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
        try:
            kind, unique_id, action, body = _decoder.decode(payload)
            seq = int(unique_id)
        except (msgspec.DecodeError, ValueError) as exc:
            return DecodeError(MALFORMED, f"not an OCPP-J CALL: {exc}")
        if not 0 <= seq <= MAX_SEQ or not isinstance(body, dict):
            return DecodeError(MALFORMED, f"uniqueId must be a u32 counter and the payload an object: {seq}")
        if kind != 2:
            return DecodeError(UNSUPPORTED_MESSAGE, f"message type {kind}, expected CALL (2)")
        if action == "StatusNotification":
            return _status(device_id, seq, body, received_ns)
        if action == "MeterValues":
            return _meter(device_id, seq, body, received_ns)
        if action == "Heartbeat":
            t = parse_iso_ns(body.get("timestamp"))
            if t is None:
                return DecodeError(BAD_TIMESTAMP, "Heartbeat without an ISO 8601 UTC timestamp")
            return RecordBatch(device_id, received_ns, health=(Health(device_id, t),))
        return DecodeError(UNSUPPORTED_MESSAGE, f"unsupported OCPP action {action!r}")


def _seq(batch: RecordBatch) -> int:
    if batch.readings:
        return batch.readings[0].seq
    return 0


def _status(
    device_id: str, seq: int, body: dict[str, Any], received_ns: int
) -> RecordBatch | DecodeError:
    state, error = body.get("status"), body.get("errorCode", "NoError")
    connector = body.get("connectorId")
    if (state not in _STATES or error not in _ERRORS or not isinstance(connector, int)
            or not 0 <= connector <= MAX_CONNECTOR):
        return DecodeError(
            MALFORMED,
            f"bad StatusNotification status={state!r} errorCode={error!r} connectorId={connector!r}",
        )
    t = parse_iso_ns(body.get("timestamp"))
    if t is None:
        return DecodeError(BAD_TIMESTAMP, "StatusNotification without an ISO 8601 UTC timestamp")
    session, info = body.get("transactionId", ""), body.get("info", "")
    if not is_clean_text(info, 50):  # OCPP 1.6: CiString50Type
        return DecodeError(MALFORMED, "StatusNotification info must be printable text, at most 50 characters")
    if not is_clean_text(session, 64):
        return DecodeError(MALFORMED, "transactionId must be printable text of at most 64 characters")
    status = Status(device_id, connector, t, str(state), str(error), str(session), info)
    return RecordBatch(device_id, received_ns, statuses=(status,))


def _meter(
    device_id: str, seq: int, body: dict[str, Any], received_ns: int
) -> RecordBatch | DecodeError:
    readings: list[Reading] = []
    values = body.get("meterValue")
    if not isinstance(values, list) or not values:
        return DecodeError(MALFORMED, "MeterValues without meterValue")
    for mv in values:
        t = parse_iso_ns(mv.get("timestamp") if isinstance(mv, dict) else None)
        if t is None:
            return DecodeError(BAD_TIMESTAMP, "meterValue without an ISO 8601 UTC timestamp")
        for sv in mv.get("sampledValue") or ():
            if not isinstance(sv, dict):
                return DecodeError(MALFORMED, f"sampledValue is not an object: {sv!r}")
            entry = MEASURANDS.get(sv.get("measurand", "Energy.Active.Import.Register"))
            if entry is None:
                return DecodeError(UNKNOWN_METRIC, f"unsupported measurand {sv.get('measurand')!r}")
            try:
                value = float(sv["value"])
            except (KeyError, TypeError, ValueError):
                return DecodeError(MALFORMED, f"sampledValue without a numeric value: {sv!r}")
            readings.append(Reading(device_id, entry[0], t, value, received_ns, seq))
    if not readings:
        return DecodeError(MALFORMED, "MeterValues carries no sampled values")
    return RecordBatch(device_id, received_ns, readings=tuple(readings))
