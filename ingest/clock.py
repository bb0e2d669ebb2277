"""Device clocks: keep the device's time when it is plausible, correct it when not.

The decision is per uplink, anchored on its newest record, because a
buffered NB-IoT uplink is only as wrong as the clock that stamped it:

* newest record further ahead of the received time than the tolerance, or
  any record before the clock floor (an unset RTC, 1970 or 2000): the
  device clock is wrong. Every record of the uplink is shifted by the same
  offset so the newest lands on the received time (the spacing of buffered
  samples survives) and readings get ``QUALITY_CLOCK_CORRECTED``.
* a reading older than the late threshold (hours late after a PSM outage,
  a QoS 1 session drained after a reconnect) keeps its real time and gets
  ``QUALITY_LATE``.

A clock running *behind* cannot be told from late delivery by timestamps
alone; such readings are kept and flagged late, never moved.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter

from msgspec.structs import replace

from citysense.records import QUALITY_CLOCK_CORRECTED, QUALITY_LATE, RecordBatch

NS = 1_000_000_000
_TIME = attrgetter("time_ns")


@dataclass(frozen=True, slots=True, kw_only=True)
class ClockPolicy:
    future_tolerance_ns: int = 120 * NS
    floor_ns: int = 1_514_764_800 * NS  # 2018-01-01T00:00:00Z
    late_after_ns: int = 900 * NS

    def late_after_for(self, report_interval_s: float) -> int:
        """Older than this is late for a profile: buffered samples of one interval are normal."""
        return max(self.late_after_ns, int(2 * report_interval_s * NS))

    def leaves_alone(self, oldest: int, newest: int, received: int, late_after_ns: int) -> bool:
        """True when :func:`adjust` returns the batch unchanged: a plausible clock, nothing late."""
        return (newest <= received + self.future_tolerance_ns and oldest >= self.floor_ns
                and oldest >= received - late_after_ns)


@dataclass(frozen=True, slots=True)
class ClockResult:
    batch: RecordBatch
    corrected: bool
    late: int  # readings flagged late


def time_bounds(batch: RecordBatch) -> tuple[int, int]:
    """Oldest and newest record time of a non-empty batch."""
    times = list(map(_TIME, batch.readings))  # C-level: no Python step per reading
    if batch.statuses:
        times.extend(map(_TIME, batch.statuses))
    if batch.health:
        times.extend(map(_TIME, batch.health))
    return min(times), max(times)


def adjust(batch: RecordBatch, policy: ClockPolicy, late_after_ns: int) -> ClockResult:
    """The batch with plausible times and quality flags (the same object when nothing changes)."""
    if not (batch.readings or batch.statuses or batch.health):
        return ClockResult(batch, False, 0)
    received = batch.received_ns
    oldest, newest = time_bounds(batch)
    if policy.leaves_alone(oldest, newest, received, late_after_ns):
        return ClockResult(batch, False, 0)  # the common case: nothing to do
    late_cut = received - late_after_ns
    offset = 0
    if newest > received + policy.future_tolerance_ns or oldest < policy.floor_ns:
        offset = received - newest
    flag = QUALITY_CLOCK_CORRECTED if offset else 0
    late = 0
    readings = []
    for r in batch.readings:
        t = r.time_ns + offset
        quality = r.quality | flag
        if t < late_cut:
            quality |= QUALITY_LATE
            late += 1
        readings.append(replace(r, time_ns=t, quality=quality))
    statuses = batch.statuses
    health = batch.health
    if offset:
        statuses = tuple(replace(s, time_ns=s.time_ns + offset) for s in statuses)
        health = tuple(replace(h, time_ns=h.time_ns + offset) for h in health)
    out = replace(batch, readings=tuple(readings), statuses=statuses, health=health)
    return ClockResult(out, bool(offset), late)
