"""The per-shape checks (``Bounds.ranges``, ``ClockPolicy.leaves_alone``) decide exactly what the
record-by-record walks decide: same kept records, same rejections, same clock result."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from citysense.records import Health, Reading, RecordBatch
from ingest.clock import NS, ClockPolicy, adjust, time_bounds
from ingest.profiles import PROFILES
from ingest.validate import profile_bounds, validate

KINDS = sorted(PROFILES)
NOW = 1_700_000_000 * NS
VALUES = st.one_of(st.floats(-1e7, 1e7), st.just(math.nan), st.just(math.inf), st.sampled_from([0.0, -0.0]))
HEALTH = st.builds(Health, st.just("d"), st.just(NOW), st.none() | st.floats(-200, 0),
                   st.none() | st.floats(-30, 50), st.none() | st.integers(-1, 3),
                   st.none() | st.floats(-1, 20))


@st.composite
def batches(draw: st.DrawFn) -> tuple[str, RecordBatch]:
    kind = draw(st.sampled_from(KINDS))
    names = [m.name for m in PROFILES[kind].metrics] + ["bogus"]
    readings = tuple(Reading("d", draw(st.sampled_from(names)), NOW, draw(VALUES), NOW)
                     for _ in range(draw(st.integers(0, 12))))
    return kind, RecordBatch("d", NOW, readings, (), tuple(draw(st.lists(HEALTH, max_size=2))))


@settings(max_examples=300, deadline=None)
@given(batches())
def test_shape_check_equals_the_walk(case: tuple[str, RecordBatch]) -> None:
    kind, batch = case
    bounds = profile_bounds(PROFILES[kind])
    fast = validate(kind, bounds, batch)
    again = validate(kind, bounds, batch)  # the shape is remembered now
    walked = validate(kind, dict(bounds), batch)  # a plain mapping: the record-by-record walk only
    assert fast == again == walked


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(-400 * 86_400, 400), min_size=1, max_size=8), st.integers(0, 7200))
def test_leaves_alone_means_adjust_changes_nothing(offsets_s: list[int], late_after_s: int) -> None:
    policy = ClockPolicy()
    batch = RecordBatch("d", NOW, tuple(Reading("d", "pm25", NOW + o * NS, 1.0, NOW) for o in offsets_s))
    oldest, newest = time_bounds(batch)
    result = adjust(batch, policy, late_after_s * NS)
    unchanged = result.batch is batch and not result.corrected and not result.late
    assert policy.leaves_alone(oldest, newest, NOW, late_after_s * NS) == unchanged
