"""The lifecycle step and the condition kinds, in injected device time (pure, no services)."""

from __future__ import annotations

from alerts.conditions import NS, aggregate, rate_of_change
from alerts.lifecycle import Compiled, Op, step
from alerts.rules import Aggregate, RateOfChange, Rule
from alerts.state import RuleState

MIN = 60 * NS


def crack_rule(**extra: object) -> Compiled:
    return Compiled.of(Rule.model_validate({
        "id": "crack", "name": "crack", "selector": {"kind": ["bridge"]},
        "condition": {"type": "threshold", "metric": "crack_width_mm"},
        "grades": {"yellow": 0.3, "orange": 0.5, "red": 1.0}, "clear": 0.25, **extra}))


def run(c: Compiled, values: list[float], every: int = MIN) -> list[tuple[int, str, int]]:
    rs = RuleState()
    out: list[tuple[int, str, int]] = []
    for i, v in enumerate(values):
        ops: list[Op] = step(c, "b-1", rs, (i + 1) * every, v)
        out += [(i, op.action, op.grade) for op in ops]
    return out


def test_threshold_fires_escalates_deescalates_and_resolves_at_the_exact_reading() -> None:
    c = crack_rule()
    assert run(c, [0.2, 0.31, 0.29, 0.26, 0.55, 0.49, 0.44, 1.2, 0.96, 0.94, 0.24]) == [
        (1, "fired", 3), (4, "escalated", 2), (6, "deescalated", 3), (7, "escalated", 1),
        (9, "deescalated", 2), (10, "resolved", 2)]


def test_for_duration_and_late_readings() -> None:
    c = crack_rule(**{"for": "2m"})
    rs = RuleState()
    assert [op.action for op in step(c, "b", rs, 1 * MIN, 0.4)] == ["pending"]
    assert step(c, "b", rs, 2 * MIN, 0.4) == []
    # a late reading past the 'for' never fires
    assert step(c, "b", rs, 4 * MIN, 0.4, late=True) == []
    assert step(c, "b", rs, 2 * MIN, 0.4) == []  # a replay of an evaluated moment: no-op
    assert [(op.action, op.from_state) for op in step(c, "b", rs, 3 * MIN, 0.4)] == [("fired", "pending")]


def test_pending_that_clears_is_cancelled_without_notifying() -> None:
    c = crack_rule(**{"for": "5m"})
    rs = RuleState()
    step(c, "b", rs, MIN, 0.4)
    ops = step(c, "b", rs, 2 * MIN, 0.1)
    assert [(op.action, op.notify) for op in ops] == [("cancelled", False)]


def test_oscillation_marks_flapping_and_notifies_once() -> None:
    c = crack_rule(clear=None)
    rs = RuleState()
    ops: list[Op] = []
    for i in range(20):
        ops += step(c, "b", rs, (i + 1) * MIN, 0.31 if i % 2 == 0 else 0.29, flap_max=4)
    flapping = [op for op in ops if op.flapping]
    assert len(flapping) == 1 and flapping[0].action == "fired"
    assert [op.notify for op in ops[flapping and ops.index(flapping[0]) + 1:]] == [False] * (
        len(ops) - ops.index(flapping[0]) - 1)


def test_rate_of_change_per_day() -> None:
    cond = RateOfChange(type="rate", metric="crack_width_mm", window=6 * 3600, per=86400)
    rs = RuleState()
    assert rate_of_change(cond, rs, 0, 0.15) is None
    rate = rate_of_change(cond, rs, 3600 * NS, 0.16)
    assert rate is not None and abs(rate - 0.24) < 1e-9  # 0.01 mm/h = 0.24 mm/day
    rate_of_change(cond, rs, 7 * 3600 * NS, 0.20)  # the first point leaves the 6 h window
    assert [t for t, _ in rs.points] == [3600 * NS, 7 * 3600 * NS]


def test_aggregate_rms_over_window_with_late_point_in_place() -> None:
    cond = Aggregate(type="aggregate", metric="accel_rms", fn="rms", window=600)
    rs = RuleState()
    aggregate(cond, rs, 2 * MIN, 3.0)
    value = aggregate(cond, rs, 1 * MIN, 4.0)  # late: lands before the newer point
    assert value is not None and abs(value - (12.5 ** 0.5)) < 1e-9
    assert [t for t, _ in rs.points] == [MIN, 2 * MIN]
    assert aggregate(cond, rs, 20 * MIN, 1.0) == 1.0  # both older points fell out of 10 minutes
