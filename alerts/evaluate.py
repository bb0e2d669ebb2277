"""Evaluate one record batch (one uplink) of a device against its rules.

Pure: the device state and the rules in, the transitions out. Readings of a
metric no rule names are ignored. Each reading is evaluated at its own
device time; a charger's connector states and the device's health at the
batch's newest time.
"""

from __future__ import annotations

from alerts.conditions import aggregate, rate_of_change, state_seconds
from alerts.lifecycle import Compiled, Op, step
from alerts.rules import Aggregate, HealthCondition, RateOfChange, Silence, StateDuration, Threshold
from alerts.silence import on_uplink
from alerts.state import FIRING, DeviceState
from citysense.records import QUALITY_LATE, RecordBatch


def _newest(batch: RecordBatch) -> int:
    times = [r.time_ns for r in batch.readings] + [s.time_ns for s in batch.statuses] + \
        [h.time_ns for h in batch.health]
    return max(times) if times else batch.received_ns


def evaluate_batch(rules: list[Compiled], batch: RecordBatch, ds: DeviceState, flap_window_ns: int,
                   flap_max: int) -> tuple[list[Op], int]:
    ops: list[Op] = []
    evaluations = 0
    device = batch.device_id
    previous_seen = ds.last_seen_ns or ds.watch_since_ns
    if batch.received_ns > ds.last_seen_ns:
        ds.last_seen_ns = batch.received_ns
    for s in batch.statuses:  # connector state changes: keep 'since' while the state holds
        held = ds.connectors.get(s.connector)
        if held is None or (held[0] != s.state and s.time_ns >= held[1]):
            ds.connectors[s.connector] = (s.state, s.time_ns)
    offline_since = [rs.since_ns for c in rules if isinstance(c.rule.condition, Silence)
                     and (rs := ds.rules.get(c.rule.id)) is not None and rs.phase == FIRING]
    if offline_since:  # back from offline: what it buffered meanwhile is inhibited (see recorder)
        ds.offline = (min(offline_since), _newest(batch))
    for c in rules:
        cond = c.rule.condition
        rs = ds.rule(c.rule.id)
        if isinstance(cond, Threshold | RateOfChange | Aggregate):
            metric = cond.metric
            for r in batch.readings:
                if r.metric != metric:
                    continue
                evaluations += 1
                late = bool(r.quality & QUALITY_LATE)
                if isinstance(cond, Threshold):
                    value: float | None = r.value
                elif isinstance(cond, RateOfChange):
                    value = rate_of_change(cond, rs, r.time_ns, r.value)
                else:
                    value = aggregate(cond, rs, r.time_ns, r.value)
                if value is not None:
                    ops += step(c, device, rs, r.time_ns, value, late=late, flap_window_ns=flap_window_ns,
                                flap_max=flap_max)
        elif isinstance(cond, HealthCondition):
            for h in batch.health:
                hv = getattr(h, cond.field)
                if hv is not None:
                    evaluations += 1
                    ops += step(c, device, rs, h.time_ns, float(hv), flap_window_ns=flap_window_ns,
                                flap_max=flap_max)
        elif isinstance(cond, StateDuration):
            if batch.statuses or ds.connectors:
                evaluations += 1
                t = _newest(batch)
                ops += step(c, device, rs, t, state_seconds(ds.connectors, cond.states, t),
                            flap_window_ns=flap_window_ns, flap_max=flap_max)
        elif isinstance(cond, Silence):
            evaluations += 1
            ops += on_uplink(c, device, rs, batch.received_ns, batch.received_ns - previous_seen)
    return ops + still_firing(ops, ds, _newest(batch)), evaluations


def still_firing(ops: list[Op], ds: DeviceState, newest_ns: int) -> list[Op]:
    """Data alerts that buffered readings moved while the device was offline (inhibited) and that
    still fire once it is back: one 'repeated' each, at the comeback, so the operator hears what
    holds now (not every moment of the backlog)."""
    start, end = ds.offline
    moved = {id(op.rs): op for op in ops if start <= op.t_ns < end
             and not isinstance(op.compiled.rule.condition, Silence)}
    t = max(newest_ns, end)
    return [Op(op.compiled, op.device_id, op.rs, "repeated", "firing", "firing", op.rs.grade, op.rs.value, t)
            for op in moved.values() if op.rs.phase == FIRING]
