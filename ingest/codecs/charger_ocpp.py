"""EV charger uplinks: OCPP 1.6 JSON CALL messages, one per uplink.

A charge point sends the OCPP-J CALL array ``[2, "<uniqueId>", "<Action>", {payload}]``.
``uniqueId`` is any string of at most 36 characters (chargers use UUIDs); when it is a
decimal u32 counter it becomes ``Reading.seq`` (the dedupe key), otherwise seq is -1 and
the readings' own (device, metric, time) keys dedupe. Payloads follow the OCPP 1.6 JSON
schemas (``ingest.codecs.ocpp16``)::

    [2, "18", "MeterValues", {"connectorId": 1, "transactionId": 3, "meterValue": [
        {"timestamp": "2025-01-01T08:00:00.000Z", "sampledValue": [
            {"value": "12345", "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
            {"value": "230.1", "measurand": "Voltage", "phase": "L1-N", "unit": "V"}]}]}]
    [2, "7c3e...", "Heartbeat", {}]

* ``MeterValues`` -> readings in canonical units (see ``ocpp16``: Wh -> kWh, W -> kW, K and
  Fahrenheit -> degC; the measurand defaults to Energy.Active.Import.Register and an energy
  unit to Wh, as the spec says; each phase its own metric; ``SignedData`` values are skipped,
  a message of nothing else is ``unsupported_message``; ``context`` and ``location`` are checked
  and not kept).
* ``StatusNotification`` -> a :class:`~citysense.records.Status` (timestamp optional: the
  received time; ``info`` carries session start/stop reasons, e.g. ``start:Remote``; the
  simulators' non-standard ``transactionId`` becomes ``session_id``).
* ``StartTransaction`` / ``StopTransaction`` -> the ``energy_kwh`` register at meterStart /
  meterStop (Wh), plus StopTransaction's ``transactionData`` meter values. The
  transaction id of a start is the central system's answer, so sessions are not derived from them.
* ``Heartbeat`` (an empty object) and ``BootNotification`` -> a
  :class:`~citysense.records.Health` without radio fields at the received time: last seen.

One metric twice at one time in one message with different values: the last wins, and
``conflicts`` counts it (the normaliser reports it as ``conflicting_duplicates``).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec

from citysense.records import Health, Reading, RecordBatch, Status
from ingest.codecs import ocpp16 as o
from ingest.codecs.base import (
    BAD_TIMESTAMP,
    MALFORMED,
    MAX_PAYLOAD_BYTES,
    MAX_RECORDS_PER_UPLINK,
    MAX_SEQ,
    OVERSIZE,
    UNKNOWN_METRIC,
    UNSUPPORTED_MESSAGE,
    DecodeError,
    is_clean_text,
)

MAX_CONNECTOR = 255  # connectorId 0 is the charge point itself, then 1..n
MAX_UNIQUE_ID = 36  # OCPP-J: "maximum of 36 characters, to allow for GUIDs"
STATES = ("Available", "Preparing", "Charging", "SuspendedEV", "SuspendedEVSE",
          "Finishing", "Reserved", "Unavailable", "Faulted")
ERROR_CODES = (
    "ConnectorLockFailure", "EVCommunicationError", "GroundFailure", "HighTemperature",
    "InternalError", "LocalListConflict", "NoError", "OtherError", "OverCurrentFailure",
    "PowerMeterFailure", "PowerSwitchFailure", "ReaderFailure", "ResetFailure",
    "UnderVoltage", "OverVoltage", "WeakSignal",
)
STOP_REASONS = ("DeAuthorized", "EVDisconnected", "EmergencyStop", "HardReset", "Local", "Other",
                "PowerLoss", "Reboot", "Remote", "SoftReset", "UnlockCommand")
METRIC_MEASURANDS = o.METRIC_MEASURANDS
_STATES, _ERRORS, _REASONS = frozenset(STATES), frozenset(ERROR_CODES), frozenset(STOP_REASONS)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_encoder = msgspec.json.Encoder()
_frame = msgspec.json.Decoder(tuple[int, str, str, msgspec.Raw])
_BOOT_LENGTHS = {"chargePointVendor": 20, "chargePointModel": 20, "chargePointSerialNumber": 25,
                 "chargeBoxSerialNumber": 25, "firmwareVersion": 50, "iccid": 20, "imsi": 20,
                 "meterType": 25, "meterSerialNumber": 25}
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


def call(seq: int | str, action: str, body: dict[str, Any]) -> bytes:
    return _encoder.encode([2, str(seq), action, body])


def status_call(seq: int | str, status: Status) -> bytes:
    body: dict[str, Any] = {"connectorId": status.connector, "status": status.state,
                            "errorCode": status.error_code, "timestamp": iso_ms(status.time_ns)}
    if status.session_id:
        body["transactionId"] = status.session_id
    if status.info:
        body["info"] = status.info
    return call(seq, "StatusNotification", body)


def sampled_value(metric: str, value: float, *, energy_unit: str = "kWh") -> dict[str, str]:
    try:
        measurand, phase, unit = METRIC_MEASURANDS[metric]
    except KeyError:
        raise ValueError(f"no OCPP measurand for metric {metric!r}") from None
    text = repr(value)
    if unit == "kWh" and energy_unit == "Wh":  # real meters report whole Wh
        unit, text = "Wh", str(round(value * 1000))
    sv = {"value": text, "measurand": measurand}
    if phase is not None:
        sv["phase"] = phase
    if unit is not None:
        sv["unit"] = unit
    return sv


def meter_call(seq: int | str, readings: tuple[Reading, ...], connector: int = 1,
               transaction_id: int | None = None, *, energy_unit: str = "kWh") -> bytes:
    by_time: dict[int, list[dict[str, str]]] = {}
    for r in readings:
        by_time.setdefault(r.time_ns, []).append(sampled_value(r.metric, r.value, energy_unit=energy_unit))
    body: dict[str, Any] = {
        "connectorId": connector,
        "meterValue": [{"timestamp": iso_ms(t), "sampledValue": sv} for t, sv in by_time.items()],
    }
    if transaction_id is not None:
        body["transactionId"] = transaction_id
    return call(seq, "MeterValues", body)


class ChargerOcppCodec:
    name = "charger-ocpp"

    def __init__(self) -> None:
        self.conflicts = 0  # one metric twice at one time in a message, other values (last wins)

    def encode(self, batch: RecordBatch) -> bytes:
        """One CALL: a status if the batch has one, else its meter values, else a heartbeat."""
        if batch.statuses:
            if len(batch.statuses) > 1 or batch.readings:
                raise ValueError("a charger uplink carries one status or meter values, not both")
            return status_call(_seq(batch), batch.statuses[0])
        if batch.readings:
            return meter_call(_seq(batch), batch.readings)
        if len(batch.health) == 1:
            return call(_seq(batch), "Heartbeat", {})
        raise ValueError("empty charger uplink")

    def decode(self, device_id: str, payload: bytes, received_ns: int) -> RecordBatch | DecodeError:
        if len(payload) > MAX_PAYLOAD_BYTES:
            return DecodeError(OVERSIZE, f"{len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
        try:
            kind, unique_id, action, raw = _frame.decode(payload)
            if kind != 2:
                return DecodeError(UNSUPPORTED_MESSAGE, f"message type {kind}, expected CALL (2)")
            decoder = o.DECODERS.get(action)
            if decoder is None:
                return DecodeError(UNSUPPORTED_MESSAGE, f"unsupported OCPP action {action[:40]!r}")
            body = decoder.decode(raw)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            return DecodeError(MALFORMED, f"not an OCPP 1.6 CALL: {exc}")
        except RecursionError:  # msgspec gives up on absurdly deep JSON this way
            return DecodeError(MALFORMED, "not an OCPP 1.6 CALL: nested too deeply")
        if not is_clean_text(unique_id, MAX_UNIQUE_ID) or not unique_id:
            return DecodeError(MALFORMED, f"uniqueId must be printable text of 1..{MAX_UNIQUE_ID} characters")
        seq = int(unique_id) if unique_id.isascii() and unique_id.isdecimal() else -1
        if seq > MAX_SEQ:
            seq = -1
        return _decode_body(self, device_id, seq, body, received_ns)


def _decode_body(codec: ChargerOcppCodec, device_id: str, seq: int, body: msgspec.Struct,
                 received_ns: int) -> RecordBatch | DecodeError:
    if isinstance(body, o.StatusNotificationReq):
        return _status(device_id, body, received_ns)
    if isinstance(body, o.MeterValuesReq):
        if not 0 <= body.connectorId <= MAX_CONNECTOR:
            return DecodeError(MALFORMED, f"connectorId {body.connectorId} outside 0..{MAX_CONNECTOR}")
        return _readings(codec, device_id, seq, body.meterValue, received_ns)
    if isinstance(body, o.StartTransactionReq | o.StopTransactionReq):
        return _transaction(codec, device_id, seq, body, received_ns)
    if isinstance(body, o.BootNotificationReq):
        for field, limit in _BOOT_LENGTHS.items():
            value = getattr(body, field)
            if value is not None and not is_clean_text(value, limit):
                return DecodeError(MALFORMED, f"BootNotification {field} must be printable, at most {limit}")
    return RecordBatch(device_id, received_ns, health=(Health(device_id, received_ns),))  # last seen


def _seq(batch: RecordBatch) -> int:
    return batch.readings[0].seq if batch.readings else 0


def _status(device_id: str, body: o.StatusNotificationReq, received_ns: int) -> RecordBatch | DecodeError:
    if (body.status not in _STATES or body.errorCode not in _ERRORS
            or not 0 <= body.connectorId <= MAX_CONNECTOR):
        return DecodeError(MALFORMED, f"bad StatusNotification status={body.status[:40]!r} "
                           f"errorCode={body.errorCode[:40]!r} connectorId={body.connectorId!r}")
    t = received_ns if body.timestamp is None else parse_iso_ns(body.timestamp)
    if t is None:
        return DecodeError(BAD_TIMESTAMP, "StatusNotification timestamp is not ISO 8601 with a zone")
    info, session = body.info or "", body.transactionId if body.transactionId is not None else ""
    session = str(session)
    if not is_clean_text(info, 50) or not is_clean_text(body.vendorErrorCode or "", 50):
        return DecodeError(MALFORMED, "StatusNotification info and vendorErrorCode: printable, at most 50")
    if not is_clean_text(body.vendorId or "", 255) or not is_clean_text(session, 64):
        return DecodeError(MALFORMED, "vendorId (255) or transactionId (64) not printable or too long")
    status = Status(device_id, body.connectorId, t, body.status, body.errorCode, session, info)
    return RecordBatch(device_id, received_ns, statuses=(status,))


def _transaction(codec: ChargerOcppCodec, device_id: str, seq: int,
                 body: o.StartTransactionReq | o.StopTransactionReq,
                 received_ns: int) -> RecordBatch | DecodeError:
    extra: tuple[o.MeterValue, ...] = ()
    if isinstance(body, o.StartTransactionReq):
        if not 1 <= body.connectorId <= MAX_CONNECTOR or not is_clean_text(body.idTag, 20):
            return DecodeError(MALFORMED, "StartTransaction needs connectorId 1..255 and an idTag of <= 20")
        meter = body.meterStart
    else:
        if body.reason is not None and body.reason not in _REASONS:
            return DecodeError(MALFORMED, f"StopTransaction reason {body.reason[:40]!r} is not OCPP 1.6")
        if body.idTag is not None and not is_clean_text(body.idTag, 20):
            return DecodeError(MALFORMED, "StopTransaction idTag must be printable, at most 20")
        meter, extra = body.meterStop, tuple(body.transactionData or ())
    t = parse_iso_ns(body.timestamp)
    if t is None:
        return DecodeError(BAD_TIMESTAMP, f"{type(body).__name__} timestamp is not ISO 8601 with a zone")
    register = o.MeterValue(body.timestamp, [o.SampledValue(str(meter), unit="Wh")])
    return _readings(codec, device_id, seq, [*extra, register], received_ns)


def _readings(codec: ChargerOcppCodec, device_id: str, seq: int, values: list[o.MeterValue],
              received_ns: int) -> RecordBatch | DecodeError:
    found: dict[tuple[str, int], Reading] = {}
    signed = 0
    if not values:
        return DecodeError(MALFORMED, "meterValue must hold at least one MeterValue")
    for mv in values:
        t = parse_iso_ns(mv.timestamp)
        if t is None:
            return DecodeError(BAD_TIMESTAMP, "meterValue timestamp is not ISO 8601 with a zone")
        for sv in mv.sampledValue:
            problem = _sample_problem(sv)
            if problem:
                return DecodeError(UNKNOWN_METRIC if "measurand" in problem else MALFORMED, problem)
            if sv.format == "SignedData":
                signed += 1
                continue
            try:
                number = float(sv.value)
            except ValueError:
                return DecodeError(MALFORMED, f"sampledValue value {sv.value[:40]!r} is not a number")
            converted = o.to_canonical(sv.measurand, sv.unit, number)
            if isinstance(converted, str):
                return DecodeError(MALFORMED, converted)
            metric = converted[0] if sv.phase is None else o.phased(converted[0], sv.phase)
            reading = Reading(device_id, metric, t, converted[1], received_ns, seq)
            before = found.get((metric, t))
            if before is not None and before.value != reading.value:
                codec.conflicts += 1
            found[(metric, t)] = reading
            if len(found) > MAX_RECORDS_PER_UPLINK:
                return DecodeError(OVERSIZE, f"more than {MAX_RECORDS_PER_UPLINK} sampled values")
    if not found:
        why = "only SignedData values" if signed else "no sampled values"
        return DecodeError(UNSUPPORTED_MESSAGE if signed else MALFORMED, f"MeterValues carries {why}")
    return RecordBatch(device_id, received_ns, readings=tuple(found.values()))


def _sample_problem(sv: o.SampledValue) -> str | None:
    if sv.measurand not in o.MEASURAND_ENUM:
        return f"measurand {sv.measurand[:40]!r} is not OCPP 1.6"
    if sv.unit is not None and sv.unit not in o.UNITS:
        return f"unit {sv.unit[:40]!r} is not OCPP 1.6"
    if sv.phase is not None and sv.phase not in o.PHASES:
        return f"phase {sv.phase[:40]!r} is not OCPP 1.6"
    if sv.context not in o.CONTEXTS or sv.format not in o.FORMATS or sv.location not in o.LOCATIONS:
        return f"context/format/location {sv.context[:40]!r}/{sv.format[:40]!r}/{sv.location[:40]!r}"
    return None
