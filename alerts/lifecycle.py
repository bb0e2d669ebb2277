"""The alert lifecycle of one (rule, device), as a pure step function.

``step`` takes the condition's value at a device time and moves the rule
state inactive -> pending -> firing -> resolved, returning the transitions
(:class:`Op`) to record. Hysteresis: a firing alert resolves only when the
value crosses ``clear``, and drops a grade only when it is the same band
below that grade's threshold. A late or replayed reading (at or before the
newest one evaluated) never moves the lifecycle: it cannot fire an alert for
a moment already past its ``for``. Flapping: more than ``flap_max``
fire/resolve transitions within ``flap_window`` marks the state flapping;
one transition says so and the ones after it are not notified until it
settles.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from alerts.rules import GRADE_NAMES, Receiver, Rule, Silence
from alerts.state import FIRING, INACTIVE, PENDING, RuleState

NS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Compiled:
    """A rule ready for evaluation: thresholds ordered red first, signs resolved."""

    rule: Rule
    receivers: tuple[Receiver, ...]
    sign: float  # +1: above fires, -1: below fires
    thresholds: tuple[tuple[int, float], ...]  # (grade, signed threshold), most severe first
    clear: float  # signed: resolve when the signed value falls below it
    band: float  # de-escalation hysteresis (signed units)
    for_ns: int

    @classmethod
    def of(cls, rule: Rule, receivers: list[Receiver] | tuple[Receiver, ...] = ()) -> Compiled:
        cond = rule.condition
        sign = -1.0 if getattr(cond, "direction", "above") == "below" else 1.0
        thresholds = tuple((int(g), sign * v) for g, v in rule.thresholds())
        if isinstance(cond, Silence):
            thresholds = ()
        lowest = thresholds[-1][1] if thresholds else 0.0
        clear = sign * rule.clear if rule.clear is not None else lowest
        return cls(rule, tuple(receivers), sign, thresholds, clear, max(lowest - clear, 0.0),
                   int(rule.for_ * NS))

    @property
    def lowest_grade(self) -> int:
        return self.thresholds[-1][0]


@dataclass(slots=True)
class Op:
    """One transition to record (and maybe notify)."""

    compiled: Compiled
    device_id: str
    rs: RuleState
    action: str  # pending | fired | escalated | deescalated | resolved | cancelled
    from_state: str
    to_state: str
    grade: int
    value: float
    t_ns: int
    notify: bool = True
    flapping: bool = False  # this transition starts flapping (its one notification)
    extra: dict[str, str] = field(default_factory=dict)


def raw_grade(c: Compiled, signed: float) -> int:
    for grade, thr in c.thresholds:
        if signed > thr:
            return grade
    return 0


def effective_grade(c: Compiled, rs: RuleState, value: float) -> int:
    """The grade a value means for this state, hysteresis included (0: none)."""
    signed = c.sign * value
    raw = raw_grade(c, signed)
    if rs.phase != FIRING:
        return raw
    if signed < c.clear or (signed <= c.clear and c.band == 0.0 and raw == 0):
        return 0
    if raw and raw <= rs.grade:
        return raw  # same grade or higher: no hysteresis upwards
    # lower grade: only once the value is the band below the current grade's threshold
    kept = raw_grade(c, signed + c.band)
    held = max(kept, rs.grade) if kept else 0
    return min(held, raw) if raw else (held or c.lowest_grade)


def _flap(c: Compiled, rs: RuleState, op: Op, window_ns: int, flap_max: int) -> None:
    """Count fire/resolve transitions; past ``flap_max`` in the window, notify once."""
    rs.flaps = [t for t in rs.flaps if t > op.t_ns - window_ns]
    rs.flaps.append(op.t_ns)
    if rs.flapping:
        if len(rs.flaps) <= max(flap_max // 2, 1):
            rs.flapping = False  # settled: notify normally again
        else:
            op.notify = False
    elif len(rs.flaps) > flap_max:
        rs.flapping = op.flapping = True


def step(c: Compiled, device_id: str, rs: RuleState, t_ns: int, value: float, *, late: bool = False,
         flap_window_ns: int = 1800 * NS, flap_max: int = 4) -> list[Op]:
    if late or t_ns <= rs.last_ns:
        return []
    rs.last_ns = t_ns
    grade = effective_grade(c, rs, value)
    rs.value = value
    if rs.phase == INACTIVE:
        if not grade:
            return []
        rs.grade, rs.since_ns = grade, t_ns
        if c.for_ns == 0:
            rs.phase = FIRING
            op = Op(c, device_id, rs, "fired", "resolved", "firing", grade, value, t_ns)
            _flap(c, rs, op, flap_window_ns, flap_max)
            return [op]
        rs.phase = PENDING
        return [Op(c, device_id, rs, "pending", "resolved", "pending", grade, value, t_ns, notify=False)]
    if rs.phase == PENDING:
        if not grade:
            was = rs.grade
            rs.phase, rs.grade = INACTIVE, 0
            return [Op(c, device_id, rs, "cancelled", "pending", "resolved", was, value, t_ns, notify=False)]
        rs.grade = min(rs.grade, grade)  # the most severe grade seen while pending
        if t_ns - rs.since_ns < c.for_ns:
            return []
        rs.phase, rs.grade = FIRING, grade
        op = Op(c, device_id, rs, "fired", "pending", "firing", grade, value, t_ns)
        _flap(c, rs, op, flap_window_ns, flap_max)
        return [op]
    # firing
    if not grade:
        last = rs.grade
        rs.phase, rs.grade = INACTIVE, 0
        op = Op(c, device_id, rs, "resolved", "firing", "resolved", last, value, t_ns)
        _flap(c, rs, op, flap_window_ns, flap_max)
        return [op]
    if grade == rs.grade:
        return []
    action = "escalated" if grade < rs.grade else "deescalated"
    rs.grade = grade
    return [Op(c, device_id, rs, action, "firing", "firing", grade, value, t_ns, notify=not rs.flapping)]


def grade_number(name: str) -> int:
    return int(GRADE_NAMES[name])
