"""OCPP 1.6 JSON: the request payloads a charge point sends, and the enumerations they use.

Typed after the OCPP 1.6 JSON schemas (``MeterValues.json``, ``StatusNotification.json``,
``StartTransaction.json``, ``StopTransaction.json``, ``Heartbeat.json``,
``BootNotification.json``): required fields have no default, integers refuse
JSON booleans (msgspec's ``int``), and an unknown field is refused, as the
schemas' ``additionalProperties: false`` says (a key garbled in transit must
not make an optional field silently absent). What the schemas
constrain beyond types (enumerations, CiString lengths) is checked by the codec.

How measurands become citysense metrics (the charger profile names them):

* each measurand citysense stores has one metric in a canonical unit: energy
  registers in kWh (``Wh`` -> /1000; the spec's default unit is ``Wh``), power
  in kW (``W`` -> /1000), voltage in V, current in A, SoC in %, temperature in
  degC (``K`` and ``Fahrenheit`` converted), frequency in Hz;
* ``phase`` is kept as part of the metric name: ``voltage_v_l1``,
  ``voltage_v_l1_n``, ``current_a_l2``, ``power_kw_l3``... (storage's key is
  device, metric, time, so a phase dimension would need a schema change; a
  name per phase needs none and the unphased total keeps its old name);
* other OCPP 1.6 measurands (reactive energy and power, interval energy,
  ``RPM``) become ``ocpp_<measurand>`` readings that validation dead-letters
  as ``unknown_metric`` while the uplink's other readings are kept.
"""

from __future__ import annotations

import msgspec

MEASURAND_ENUM = frozenset({
    "Current.Export", "Current.Import", "Current.Offered", "Energy.Active.Export.Register",
    "Energy.Active.Import.Register", "Energy.Reactive.Export.Register", "Energy.Reactive.Import.Register",
    "Energy.Active.Export.Interval", "Energy.Active.Import.Interval", "Energy.Reactive.Export.Interval",
    "Energy.Reactive.Import.Interval", "Frequency", "Power.Active.Export", "Power.Active.Import",
    "Power.Factor", "Power.Offered", "Power.Reactive.Export", "Power.Reactive.Import", "RPM", "SoC",
    "Temperature", "Voltage",
})
CONTEXTS = frozenset({"Interruption.Begin", "Interruption.End", "Sample.Clock", "Sample.Periodic",
                      "Transaction.Begin", "Transaction.End", "Trigger", "Other"})
FORMATS = frozenset({"Raw", "SignedData"})
LOCATIONS = frozenset({"Cable", "EV", "Inlet", "Outlet", "Body"})
PHASES = ("L1", "N", "L2", "L3", "L1-N", "L2-N", "L3-N", "L1-L2", "L2-L3", "L3-L1")
UNITS = frozenset({"Wh", "kWh", "varh", "kvarh", "W", "kW", "VA", "kVA", "var", "kvar", "A", "V", "K",
                   "Celcius", "Celsius", "Fahrenheit", "Percent"})
DEFAULT_MEASURAND = "Energy.Active.Import.Register"

# quantity -> {unit: (divisor, offset)} to the canonical unit; the first is the default unit.
# A divisor, not a factor: 18123277 Wh / 1000 is exactly 18123.277, * 0.001 is not.
_SCALES: dict[str, dict[str | None, tuple[float, float]]] = {
    "energy": {"Wh": (1000.0, 0.0), "kWh": (1.0, 0.0)},
    "power": {"W": (1000.0, 0.0), "kW": (1.0, 0.0)},
    "voltage": {"V": (1.0, 0.0)},
    "current": {"A": (1.0, 0.0)},
    "percent": {"Percent": (1.0, 0.0)},
    "temperature": {"Celsius": (1.0, 0.0), "Celcius": (1.0, 0.0), "K": (1.0, -273.15)},
    "number": {None: (1.0, 0.0)},  # frequency, power factor: OCPP 1.6 has no unit for them
}
# measurand -> (metric, quantity, canonical unit as the encoder writes it)
MEASURANDS: dict[str, tuple[str, str, str | None]] = {
    "Energy.Active.Import.Register": ("energy_kwh", "energy", "kWh"),
    "Energy.Active.Export.Register": ("energy_export_kwh", "energy", "kWh"),
    "Power.Active.Import": ("power_kw", "power", "kW"),
    "Power.Active.Export": ("power_export_kw", "power", "kW"),
    "Power.Offered": ("power_offered_kw", "power", "kW"),
    "Voltage": ("voltage_v", "voltage", "V"),
    "Current.Import": ("current_a", "current", "A"),
    "Current.Export": ("current_export_a", "current", "A"),
    "Current.Offered": ("current_offered_a", "current", "A"),
    "SoC": ("soc_pct", "percent", "Percent"),
    "Temperature": ("temperature", "temperature", "Celsius"),
    "Frequency": ("frequency_hz", "number", None),
    "Power.Factor": ("power_factor", "number", None),
}
# Metrics whose per-phase variants the charger profile stores.
PHASED_METRICS = ("energy_kwh", "power_kw", "voltage_v", "current_a")


def phased(metric: str, phase: str) -> str:
    return f"{metric}_{phase.lower().replace('-', '_')}"


# metric -> (measurand, phase or None, unit the encoder writes)
METRIC_MEASURANDS: dict[str, tuple[str, str | None, str | None]] = {}
for _measurand, (_metric, _quantity, _unit) in MEASURANDS.items():
    METRIC_MEASURANDS[_metric] = (_measurand, None, _unit)
    if _metric in PHASED_METRICS:
        for _phase in PHASES:
            METRIC_MEASURANDS[phased(_metric, _phase)] = (_measurand, _phase, _unit)


def to_canonical(measurand: str, unit: str | None, value: float) -> tuple[str, float] | str:
    """(metric, value in its canonical unit), or why the unit does not fit the measurand."""
    entry = MEASURANDS.get(measurand)
    if entry is None:  # a valid OCPP measurand citysense does not store: validation refuses it
        return "ocpp_" + measurand.lower().replace(".", "_"), value
    metric, quantity, _ = entry
    if quantity == "temperature" and unit == "Fahrenheit":
        return metric, (value - 32.0) * 5.0 / 9.0
    scales = _SCALES[quantity]
    scale = scales.get(unit if unit is not None else next(iter(scales)))
    if scale is None:
        return f"unit {unit!r} does not fit measurand {measurand}"
    return metric, value / scale[0] + scale[1]


class SampledValue(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    value: str
    context: str = "Sample.Periodic"
    format: str = "Raw"
    measurand: str = DEFAULT_MEASURAND
    phase: str | None = None
    location: str = "Outlet"
    unit: str | None = None


class MeterValue(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    timestamp: str
    sampledValue: list[SampledValue]


class MeterValuesReq(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    connectorId: int
    meterValue: list[MeterValue]
    transactionId: int | str | None = None


class StatusNotificationReq(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    connectorId: int
    errorCode: str
    status: str
    info: str | None = None
    timestamp: str | None = None
    vendorId: str | None = None
    vendorErrorCode: str | None = None
    # citysense extension (not in the OCPP schema): the session a status belongs to, which the
    # simulators send so storage can follow sessions; a real charger's statuses have none.
    transactionId: int | str | None = None


class StartTransactionReq(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    connectorId: int
    idTag: str
    meterStart: int
    timestamp: str
    reservationId: int | None = None


class StopTransactionReq(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    meterStop: int
    timestamp: str
    transactionId: int
    idTag: str | None = None
    reason: str | None = None
    transactionData: list[MeterValue] | None = None


class HeartbeatReq(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass  # an empty object; the charge point's clock is not in it


class BootNotificationReq(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    chargePointVendor: str
    chargePointModel: str
    chargePointSerialNumber: str | None = None
    chargeBoxSerialNumber: str | None = None
    firmwareVersion: str | None = None
    iccid: str | None = None
    imsi: str | None = None
    meterType: str | None = None
    meterSerialNumber: str | None = None


REQUESTS: dict[str, type[msgspec.Struct]] = {
    "MeterValues": MeterValuesReq, "StatusNotification": StatusNotificationReq,
    "StartTransaction": StartTransactionReq, "StopTransaction": StopTransactionReq,
    "Heartbeat": HeartbeatReq, "BootNotification": BootNotificationReq,
}
DECODERS = {action: msgspec.json.Decoder(cls) for action, cls in REQUESTS.items()}
