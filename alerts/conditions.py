"""Condition kinds as pure functions of a rule's state and one observation.

Time is the device's (integer nanoseconds from the readings), never the
wall clock, so evaluation is replayable and tests inject any time they like.
Each function folds the observation into the rule state's window (if it has
one) and returns the condition's value at that moment, or None when there is
not enough data yet.
"""

from __future__ import annotations

import bisect
import math

from alerts.rules import Aggregate, RateOfChange
from alerts.state import RuleState

NS = 1_000_000_000


def add_point(rs: RuleState, window_s: float, t_ns: int, value: float) -> None:
    """Insert (t, value) in time order (a late reading lands in its place; a re-delivered
    one replaces its twin) and drop points older than the window behind the newest."""
    points = rs.points
    i = bisect.bisect_left(points, (t_ns, -math.inf))
    if i < len(points) and points[i][0] == t_ns:
        points[i] = (t_ns, value)
    else:
        points.insert(i, (t_ns, value))
    horizon = points[-1][0] - int(window_s * NS)
    if points[0][0] < horizon:
        del points[:bisect.bisect_left(points, (horizon, -math.inf))]


def rate_of_change(cond: RateOfChange, rs: RuleState, t_ns: int, value: float) -> float | None:
    """Change per ``cond.per`` seconds between the oldest and newest point in the window."""
    add_point(rs, cond.window, t_ns, value)
    points = rs.points
    if len(points) < cond.min_points:
        return None
    (t0, v0), (t1, v1) = points[0], points[-1]
    if t1 <= t0:
        return None
    return (v1 - v0) / ((t1 - t0) / NS) * cond.per


def aggregate(cond: Aggregate, rs: RuleState, t_ns: int, value: float) -> float | None:
    add_point(rs, cond.window, t_ns, value)
    values = [v for _, v in rs.points]
    if cond.fn == "mean":
        return sum(values) / len(values)
    if cond.fn == "max":
        return max(values)
    if cond.fn == "min":
        return min(values)
    if cond.fn == "sum":
        return math.fsum(values)
    return math.sqrt(sum(v * v for v in values) / len(values))  # rms


def state_seconds(connectors: dict[int, tuple[str, int]], states: list[str], t_ns: int) -> float:
    """Longest time any connector has been in one of ``states`` at device time ``t_ns``."""
    longest = 0.0
    for state, since in connectors.values():
        if state in states:
            longest = max(longest, (t_ns - since) / NS)
    return longest
