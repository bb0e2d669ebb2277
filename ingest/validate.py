"""Validation of decoded records against the device's profile.

Codecs guarantee types (a value is a float, a time an integer) and convert
wire units to the profile's canonical units; this module checks meaning:
the metric belongs to the profile and its value is finite and inside the
profile's range; health figures are inside their radio/power ranges;
charger states are OCPP 1.6 states.

An uplink is validated record by record. Good records are kept; rejected
ones are reported so the caller can dead-letter them (a good reading is
never lost because a bad one sat beside it).

Readings are checked per uplink shape first: a profile's :class:`Bounds`
remembers, per tuple of metric names an uplink carried (a kind sends few),
the ranges in that order, so an uplink whose values are all in range is
checked by C-level comparisons instead of a Python step per reading. Any
uplink that fails that check is walked reading by reading to say why.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from operator import attrgetter, le

from msgspec.structs import replace

from citysense.records import QUALITY_LATE, Health, Reading, RecordBatch, Status
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


_SHAPES_MAX = 1024  # metric tuples remembered per profile (a kind sends a handful)
_METRIC, _VALUE = attrgetter("metric"), attrgetter("value")
_HEALTH_FIELDS = ("rsrp_dbm", "sinr_db", "ce_level", "battery_v")
_HEALTH_VALUES = attrgetter(*_HEALTH_FIELDS)
(_RL, _RH), (_SL, _SH), (_CL, _CH), (_BL, _BH) = (HEALTH_RANGES[f] for f in _HEALTH_FIELDS)
Ranges = tuple[tuple[float, ...], tuple[float, ...]]


class Bounds(dict[str, tuple[float, float, str]]):
    """metric -> (low, high, unit), and the ranges of each metric tuple seen, in its order."""

    __slots__ = ("_shapes",)

    def __init__(self, items: dict[str, tuple[float, float, str]] | None = None) -> None:
        super().__init__(items or {})
        self._shapes: dict[tuple[str, ...], Ranges | None] = {}

    def ranges(self, metrics: tuple[str, ...]) -> Ranges | None:
        """(lows, highs) for ``metrics``; None if one is not the profile's."""
        try:
            return self._shapes[metrics]
        except KeyError:
            pass
        found = [self.get(m) for m in metrics]
        ranges = None
        if None not in found:
            ranges = (tuple(b[0] for b in found if b), tuple(b[1] for b in found if b))
        if len(self._shapes) >= _SHAPES_MAX:
            self._shapes.clear()
        self._shapes[metrics] = ranges
        return ranges


def profile_bounds(profile: Profile) -> Bounds:
    return Bounds({m.name: (m.low, m.high, m.unit) for m in profile.metrics})


def _health_problem(h: Health) -> str | None:
    values = rsrp, sinr, ce, battery = _HEALTH_VALUES(h)
    if ((rsrp is None or _RL <= rsrp <= _RH) and (sinr is None or _SL <= sinr <= _SH)
            and (ce is None or _CL <= ce <= _CH) and (battery is None or _BL <= battery <= _BH)):
        return None  # one expression: a loop over four fields cost more than the rest of the check
    for name, value in zip(_HEALTH_FIELDS, values, strict=True):
        low, high = HEALTH_RANGES[name]
        if value is not None and not low <= value <= high:
            return f"health {name}={value} outside [{low}, {high}]"
    return None


def _all_in_range(bounds: Bounds, readings: tuple[Reading, ...]) -> bool:
    ranges = bounds.ranges(tuple(map(_METRIC, readings)))
    if ranges is None:
        return False
    values = list(map(_VALUE, readings))
    return all(map(le, ranges[0], values)) and all(map(le, values, ranges[1]))  # NaN fails too


def _status_problem(s: Status) -> Rejection | None:
    if s.state not in OCPP_STATES:
        return Rejection(INVALID_STATE, f"connector {s.connector} state {s.state!r} is not OCPP 1.6")
    if isinstance(s.connector, bool):  # bool is an int subclass; msgpack would carry it as a bool
        return Rejection(OUT_OF_RANGE, f"connector {s.connector!r} is not an integer")
    if s.connector < 0:
        return Rejection(OUT_OF_RANGE, f"connector {s.connector} is negative")
    return None


def validate(kind: str, bounds: Mapping[str, tuple[float, float, str]],
             batch: RecordBatch) -> tuple[RecordBatch, list[Rejection]]:
    """The batch without its rejected records, and why each was rejected."""
    rejected: list[Rejection] = []
    keep_readings = None
    readings = batch.readings
    if readings and isinstance(bounds, Bounds) and _all_in_range(bounds, readings):
        if not batch.statuses and not batch.health:
            return batch, rejected  # the common case
        readings = ()  # all kept: only statuses and health left to check
    for i, r in enumerate(readings):
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
