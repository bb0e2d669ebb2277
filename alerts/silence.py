"""Silence detection: late after interval + grace, offline after twice that.

Measured from the device's last uplink (or, for a registered device that
never reported, from when the engine started watching it), against a clock
the engine injects. Deadlines live in a heap with one live entry per device
(lazy: an uplink moves the device's deadline without touching the heap; the
stale entry, when it comes up, is pushed again at the new deadline), so
nothing sweeps all devices.
"""

from __future__ import annotations

import heapq

from alerts.lifecycle import NS, Compiled, Op
from alerts.rules import GRADE_NAMES, Silence
from alerts.state import FIRING, INACTIVE, DeviceState, RuleState


def late_after_ns(cond: Silence, interval_s: float) -> int:
    grace = max(cond.grace, cond.grace_ratio * interval_s)
    return int((interval_s + grace) * NS)


def silence_grade(cond: Silence, silent_ns: int, late_ns: int) -> int:
    if silent_ns >= 2 * late_ns:
        return int(GRADE_NAMES[cond.offline_grade])
    if silent_ns >= late_ns:
        return int(GRADE_NAMES[cond.late_grade])
    return 0


def next_deadline(since_ns: int, silent_grade: int, cond: Silence, late_ns: int) -> int | None:
    if silent_grade == 0:
        return since_ns + late_ns
    if silent_grade == int(GRADE_NAMES[cond.late_grade]):
        return since_ns + 2 * late_ns
    return None  # offline: nothing more to wait for


def on_uplink(c: Compiled, device_id: str, rs: RuleState, t_ns: int, silent_ns: int) -> list[Op]:
    """The device spoke: a silence alert resolves (value = how long it was silent, s)."""
    if rs.phase != FIRING:
        return []
    grade, rs.phase, rs.grade = rs.grade, INACTIVE, 0
    return [Op(c, device_id, rs, "resolved", "firing", "resolved", grade, silent_ns / NS, t_ns)]


def on_deadline(c: Compiled, device_id: str, rs: RuleState, now_ns: int, grade: int,
                silent_ns: int) -> list[Op]:
    if grade == 0 or grade == rs.grade:
        return []
    value = silent_ns / NS
    if rs.phase != FIRING:
        rs.phase, rs.grade, rs.since_ns = FIRING, grade, now_ns
        return [Op(c, device_id, rs, "fired", "resolved", "firing", grade, value, now_ns)]
    action = "escalated" if grade < rs.grade else "deescalated"
    rs.grade = grade
    return [Op(c, device_id, rs, action, "firing", "firing", grade, value, now_ns)]


def schedule(heap: DeadlineHeap, device_id: str, ds: DeviceState, silence: list[Compiled],
             interval_s: float) -> None:
    """Put the device's next silence deadline (of any of its silence rules) on the heap."""
    since = ds.last_seen_ns or ds.watch_since_ns
    for c in silence:
        assert isinstance(c.rule.condition, Silence)
        late = late_after_ns(c.rule.condition, interval_s)
        deadline = next_deadline(since, ds.rule(c.rule.id).grade, c.rule.condition, late)
        if deadline is not None:
            heap.schedule(device_id, deadline)


def due(device_id: str, ds: DeviceState, silence: list[Compiled], interval_s: float, now_ns: int) -> list[Op]:
    """The transitions a device's silence makes by ``now_ns``."""
    since = ds.last_seen_ns or ds.watch_since_ns
    ops: list[Op] = []
    for c in silence:
        cond = c.rule.condition
        assert isinstance(cond, Silence)
        if not ds.last_seen_ns and not cond.include_never_seen:
            continue
        grade = silence_grade(cond, now_ns - since, late_after_ns(cond, interval_s))
        ops += on_deadline(c, device_id, ds.rule(c.rule.id), now_ns, grade, now_ns - since)
    return ops


class DeadlineHeap:
    def __init__(self) -> None:
        self._heap: list[tuple[int, str]] = []
        self._due: dict[str, int] = {}  # device -> the deadline its live entry carries

    def __len__(self) -> int:
        return len(self._due)

    def schedule(self, device_id: str, deadline_ns: int) -> None:
        """Make sure the device is looked at by ``deadline_ns`` (an earlier entry stays)."""
        current = self._due.get(device_id)
        if current is None or deadline_ns < current:
            self._due[device_id] = deadline_ns
            heapq.heappush(self._heap, (deadline_ns, device_id))

    def pop_due(self, now_ns: int) -> list[str]:
        out: list[str] = []
        heap = self._heap
        while heap and heap[0][0] <= now_ns:
            deadline, device_id = heapq.heappop(heap)
            if self._due.get(device_id) == deadline:
                del self._due[device_id]
                out.append(device_id)
        return out

    def forget(self, device_id: str) -> None:
        self._due.pop(device_id, None)

    def next_ns(self) -> int | None:
        return self._heap[0][0] if self._heap else None
