"""Validation of decoded records against the device's profile.

Codecs guarantee types (a value is a float, a time an integer) and convert
wire units to the profile's canonical units; this module checks meaning:
the metric belongs to the profile and its value is finite and inside the
profile's range; health figures are inside their radio/power ranges;
charger states are OCPP 1.6 states.

An uplink is validated record by record. Good records are kept; rejected
ones are reported so the caller can dead-letter them (a good reading is
never lost because a bad one sat beside it).
"""

from __future__ import annotations

from dataclasses import dataclass

from msgspec.structs import replace

from citysense.records import QUALITY_LATE, Health, RecordBatch, Status
from ingest.codecs.base import OUT_OF_RANGE, UNKNOWN_METRIC
from ingest.profiles import Profile

INVALID_STATE = "invalid_state"
BEYOND_RETENTION = "beyond_retention"

OCPP_STATES = frozenset({
    "Available", "Preparing", "Charging", "SuspendedEV", "SuspendedEVSE", "Finishing",
    "Reserved", "Unavailable", "Faulted",
})

# Health ranges: 3GPP measurement ranges for NB-IoT/LTE, CE levels 0..2, a generous battery range.
HEALTH_RANGES: dict[str, tuple[float, float]] = {
    "rsrp_dbm": (-156.0, -31.0),
    "sinr_db": (-23.0, 40.0),
    "ce_level": (0, 2),
    "battery_v": (0.0, 15.0),
}


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str
    detail: str


Bounds = dict[str, tuple[float, float, str]]


def profile_bounds(profile: Profile) -> Bounds:
    return {m.name: (m.low, m.high, m.unit) for m in profile.metrics}


def _health_problem(h: Health) -> str | None:
    for name, (low, high) in HEALTH_RANGES.items():
        value = getattr(h, name)
        if value is not None and not low <= value <= high:
            return f"health {name}={value} outside [{low}, {high}]"
    return None


def _status_problem(s: Status) -> Rejection | None:
    if s.state not in OCPP_STATES:
        return Rejection(INVALID_STATE, f"connector {s.connector} state {s.state!r} is not OCPP 1.6")
    if isinstance(s.connector, bool):  # bool is an int subclass; msgpack would carry it as a bool
        return Rejection(OUT_OF_RANGE, f"connector {s.connector!r} is not an integer")
    if s.connector < 0:
        return Rejection(OUT_OF_RANGE, f"connector {s.connector} is negative")
    return None


def validate(kind: str, bounds: Bounds, batch: RecordBatch) -> tuple[RecordBatch, list[Rejection]]:
    """The batch without its rejected records, and why each was rejected."""
    rejected: list[Rejection] = []
    keep_readings = None
    for i, r in enumerate(batch.readings):
        b = bounds.get(r.metric)
        if b is not None and b[0] <= r.value <= b[1]:  # NaN fails the comparison too
            if keep_readings is not None:
                keep_readings.append(r)
            continue
        if keep_readings is None:
            keep_readings = list(batch.readings[:i])
        if b is None:
            rejected.append(Rejection(UNKNOWN_METRIC, f"{kind} has no metric {r.metric!r}"))
        else:
            rejected.append(Rejection(
                OUT_OF_RANGE, f"{r.metric}={r.value} outside [{b[0]}, {b[1]}] {b[2]}"
            ))
    statuses = batch.statuses
    health = batch.health
    if statuses:
        kept_s = []
        for s in statuses:
            problem = _status_problem(s)
            if problem is None:
                kept_s.append(s)
            else:
                rejected.append(problem)
        statuses = tuple(kept_s)
    if health:
        kept_h = []
        for h in health:
            text = _health_problem(h)
            if text is None:
                kept_h.append(h)
            else:
                rejected.append(Rejection(OUT_OF_RANGE, text))
        health = tuple(kept_h)
    if not rejected:
        return batch, rejected
    readings = batch.readings if keep_readings is None else tuple(keep_readings)
    return replace(batch, readings=readings, statuses=statuses, health=health), rejected


def within_retention(batch: RecordBatch, cut_ns: int) -> tuple[RecordBatch, list[Rejection], int]:
    """The batch without records older than ``cut_ns``, why each was refused, and how many of
    the refused readings were flagged late.

    Storage drops such rows at its next retention pass: storing them would acknowledge a
    reading and then lose it without a trace, so they are refused (dead-lettered) instead."""
    times = [r.time_ns for r in batch.readings]
    times += [s.time_ns for s in batch.statuses] + [h.time_ns for h in batch.health]
    if not times or min(times) >= cut_ns:
        return batch, [], 0
    rejected: list[Rejection] = []
    late = 0
    readings = []
    for r in batch.readings:
        if r.time_ns < cut_ns:
            text = f"{r.metric} at {r.time_ns} ns is older than retention"
            rejected.append(Rejection(BEYOND_RETENTION, text))
            late += bool(r.quality & QUALITY_LATE)
        else:
            readings.append(r)
    statuses = [s for s in batch.statuses if s.time_ns >= cut_ns]
    health = [h for h in batch.health if h.time_ns >= cut_ns]
    dropped = (len(batch.statuses) - len(statuses)) + (len(batch.health) - len(health))
    if dropped:
        text = f"{dropped} status/health record(s) older than retention"
        rejected.append(Rejection(BEYOND_RETENTION, text))
    out = replace(batch, readings=tuple(readings), statuses=tuple(statuses), health=tuple(health))
    return out, rejected, late
