"""EV charge piles: an OCPP 1.6 connector state machine, meter values, heartbeats.

One pile is one device with connector 1. A pile that has sent nothing for
``HEARTBEAT_S`` (the OCPP HeartbeatInterval, which is the charger profile's
``report_interval_s``: what silence detection expects) sends a Heartbeat, in
every state: idle, reserved, faulted, unavailable, or waiting to be unplugged.
Sessions arrive more often by day; a session goes
Preparing -> Charging (start reason ``Local`` or ``Remote``), samples
MeterValues every 60 s (power kW with a taper near full, energy register
kWh, voltage, current, SoC), may pause as SuspendedEVSE (ordered charging at
the evening peak) or SuspendedEV, and ends Finishing (stop reason, OCPP 1.6
``Reason``) -> Available when unplugged. Piles also fault (with an OCPP error
code) and go Unavailable for maintenance, or get Reserved. Every state change
is checked against :data:`TRANSITIONS` (OCPP 1.6 section 4.9); an illegal one
raises, so a bug cannot slip into the wire.

The wire is OCPP 1.6 JSON: MeterValues with units (the energy register in whole Wh, as
meters report it; the record holds the kWh the normaliser makes of it), an integer
transactionId, and the empty ``Heartbeat.req``. StatusNotification carries one citysense
extension, ``transactionId`` (the session's id), so storage can follow sessions.
"""

from __future__ import annotations

import random
from collections.abc import Generator, Iterator
from functools import partial

from citysense.records import Health, Reading, RecordBatch, Status
from ingest.codecs.charger_ocpp import call, meter_call, status_call
from ingest.profiles import CHARGER_OCPP
from ingest.topics import uplink_topic
from simulators.model import NS, DeviceStream, Uplink, traffic_load

# One number for the pile and the platform: the alert rules and the dashboard measure a pile's
# silence against its profile's interval, so the simulator heartbeats at exactly that.
HEARTBEAT_S = int(CHARGER_OCPP.report_interval_s)
METER_S = 60  # OCPP MeterValueSampleInterval, while charging
TRANSITIONS: dict[str, frozenset[str]] = {
    "Available": frozenset({"Preparing", "Charging", "SuspendedEV", "SuspendedEVSE",
                            "Reserved", "Unavailable", "Faulted"}),
    "Preparing": frozenset({"Available", "Charging", "SuspendedEV", "SuspendedEVSE",
                            "Finishing", "Faulted"}),
    "Charging": frozenset({"Available", "SuspendedEV", "SuspendedEVSE", "Finishing",
                           "Unavailable", "Faulted"}),
    "SuspendedEV": frozenset({"Available", "Charging", "SuspendedEVSE", "Finishing",
                              "Unavailable", "Faulted"}),
    "SuspendedEVSE": frozenset({"Available", "Charging", "SuspendedEV", "Finishing",
                                "Unavailable", "Faulted"}),
    "Finishing": frozenset({"Available", "Preparing", "Unavailable", "Faulted"}),
    "Reserved": frozenset({"Available", "Preparing", "Unavailable", "Faulted"}),
    "Unavailable": frozenset({"Available", "Preparing", "Charging", "SuspendedEV",
                              "SuspendedEVSE", "Faulted"}),
    "Faulted": frozenset({"Available", "Preparing", "Charging", "SuspendedEV",
                          "SuspendedEVSE", "Finishing", "Reserved", "Unavailable"}),
}
FAULT_CODES = ("GroundFailure", "HighTemperature", "OverCurrentFailure", "PowerMeterFailure",
               "ConnectorLockFailure", "EVCommunicationError", "InternalError", "WeakSignal")
STOP_WEIGHTS = {"EVDisconnected": 55, "Local": 30, "Remote": 10, "EmergencyStop": 2,
                "PowerLoss": 2, "Other": 1}


def _ns(seconds: float) -> int:
    """Seconds as nanoseconds, whole milliseconds (OCPP timestamps carry ms)."""
    return int(seconds * 1000) * 1_000_000


def _heartbeat_batch(device_id: str) -> RecordBatch:
    """What a Heartbeat.req decodes to: a mark at the received time, which records of the
    simulators leave at 0 (as every ``received_ns``) since only the receiver knows it."""
    return RecordBatch(device_id, 0, health=(Health(device_id, 0),))


class IllegalTransition(RuntimeError):
    pass


class ChargerDevice(DeviceStream):
    __slots__ = ("dc", "energy_kwh", "power_kw", "rng", "seq", "start_ns", "state", "topic")

    def __init__(
        self, device_id: str, rng: random.Random, *, start_ns: int, power_kw: float = 7.0,
        dc: bool = False,
    ) -> None:
        self.rng = rng
        self.start_ns = start_ns - start_ns % 1_000_000
        self.power_kw = power_kw
        self.dc = dc
        self.energy_kwh = round(rng.uniform(0, 40_000), 3)
        self.state = "Available"
        self.seq = 0
        self.topic = uplink_topic("charger", device_id)
        super().__init__(device_id, "charger")

    # -- messages ----------------------------------------------------------
    def _next_seq(self) -> int:
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        return self.seq

    def _status(self, t: int, state: str, *, error: str = "NoError", session: str = "",
                info: str = "") -> Uplink:
        if state not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"{self.device_id}: {self.state} -> {state}")
        self.state = state
        status = Status(self.device_id, 1, t, state, error, session, info)
        batch = RecordBatch(self.device_id, 0, statuses=(status,))
        return Uplink(self.device_id, self.topic, status_call(self._next_seq(), status), batch, t)

    def _meter(self, t: int, power: float, soc: float, session: str) -> Uplink:
        volts = round(self.rng.uniform(380, 420) if self.dc else self.rng.gauss(230, 2), 1)
        seq = self._next_seq()
        wh = round(self.energy_kwh * 1000)  # the register in whole Wh, as on the wire
        values = (("power_kw", round(power, 2)), ("energy_kwh", wh / 1000),
                  ("voltage_v", volts), ("current_a", round(power * 1000 / volts, 2)),
                  ("soc_pct", round(soc, 1)))
        readings = tuple(Reading(self.device_id, m, t, v, 0, seq) for m, v in values)
        batch = RecordBatch(self.device_id, 0, readings=readings)
        transaction = int(session.rsplit("-", 1)[1])
        payload = meter_call(seq, readings, 1, transaction, energy_unit="Wh")
        return Uplink(self.device_id, self.topic, payload, batch, t)

    def _heartbeat(self, t: int) -> Uplink:
        """``Heartbeat.req`` is an empty object: storage marks the pile seen at the received time."""
        payload = call(self._next_seq(), "Heartbeat", {})
        return Uplink(self.device_id, self.topic, payload, None, t,
                      recipe=partial(_heartbeat_batch, self.device_id))

    # -- behaviour -----------------------------------------------------------
    def _quiet(self, t: int, until: int) -> Generator[Uplink, None, int]:
        """Nothing else to say from ``t`` (the last uplink) to ``until``: a Heartbeat every
        ``HEARTBEAT_S``, whatever the connector's state (OCPP 1.6 §4.6: a Heartbeat may be
        skipped only when another message went out within the interval); returns ``until``."""
        while t + HEARTBEAT_S * NS < until:
            t += HEARTBEAT_S * NS
            yield self._heartbeat(t)
        return until

    def _life(self) -> Iterator[Uplink]:
        rng = self.rng
        t = self.start_ns + _ns(rng.uniform(0, HEARTBEAT_S))
        sessions = 0
        while True:
            mean_gap_s = 3600 * 6 / (0.2 + traffic_load(t))  # busier by day
            t = yield from self._quiet(t, t + _ns(rng.expovariate(1 / mean_gap_s)))
            roll = rng.random()
            if roll < 0.01:
                code = rng.choice(FAULT_CODES)
                yield self._status(t, "Faulted", error=code)
                t = yield from self._quiet(t, t + _ns(rng.uniform(0.5, 8) * 3600))
                yield self._status(t, "Available")
                continue
            if roll < 0.015:
                yield self._status(t, "Unavailable", info="maintenance")
                t = yield from self._quiet(t, t + _ns(rng.uniform(1, 4) * 3600))
                yield self._status(t, "Available")
                continue
            sessions += 1
            session = f"S-{self.device_id}-{sessions}"
            if roll < 0.05:
                yield self._status(t, "Reserved")
                t = yield from self._quiet(t, t + _ns(rng.uniform(60, 900)))
                if rng.random() < 0.2:  # reservation expired
                    yield self._status(t, "Available", info="reservation expired")
                    continue
            t = yield from self._session(t, session)

    def _session(self, t: int, session: str) -> Generator[Uplink, None, int]:
        rng = self.rng
        yield self._status(t, "Preparing", info="cable plugged in")
        t += _ns(rng.uniform(20, 120))
        if rng.random() < 0.03:  # not authorised: the driver unplugs
            yield self._status(t, "Available", info="stop:DeAuthorized")
            return t
        start = "Remote" if rng.random() < 0.6 else "Local"  # app vs card
        yield self._status(t, "Charging", session=session, info=f"start:{start}")
        soc = rng.uniform(10, 60)
        target = rng.uniform(80, 100)
        capacity = rng.uniform(40, 80)
        while soc < target:
            if self.state == "Charging" and rng.random() < 0.02:
                pause = "SuspendedEVSE" if rng.random() < 0.7 else "SuspendedEV"
                yield self._status(t, pause, session=session, info="load management"
                                   if pause == "SuspendedEVSE" else "")
            elif self.state != "Charging" and rng.random() < 0.3:
                yield self._status(t, "Charging", session=session)
            taper = 1.0 if soc < 80 else max(0.15, (100 - soc) / 20)
            power = self.power_kw * taper * rng.uniform(0.9, 1.0) if self.state == "Charging" else 0.0
            t += METER_S * NS
            self.energy_kwh += power * METER_S / 3600
            soc = min(100.0, soc + 100 * power * METER_S / 3600 / capacity)
            yield self._meter(t, power, soc, session)
            if rng.random() < 0.004:  # driver stops early
                break
        if rng.random() < 0.002:
            code = rng.choice(FAULT_CODES)
            yield self._status(t, "Faulted", error=code, session=session, info="stop:Other")
            t = yield from self._quiet(t, t + _ns(rng.uniform(0.5, 4) * 3600))
            yield self._status(t, "Available")
            return t
        if soc >= target and self.state == "Charging" and rng.random() < 0.5:
            yield self._status(t, "SuspendedEV", session=session, info="battery full")
        reason = rng.choices(list(STOP_WEIGHTS), weights=list(STOP_WEIGHTS.values()))[0]
        yield self._status(t, "Finishing", session=session, info=f"stop:{reason}")
        t = yield from self._quiet(t, t + _ns(rng.uniform(30, 1800)))
        yield self._status(t, "Available", info="cable unplugged")
        return t
