"""``state_duration`` on its own timer: a faulted charger escalates when its time comes.

The value of a state-duration condition grows by itself while a connector
stays in a watched state, so waiting for the charger's next uplink would
escalate late (or never, for a charger that stops talking while faulted).
After each evaluation the engine puts the (rule, device) on a deadline heap
at the next moment that can change the lifecycle: the lowest threshold
crossed, ``for`` elapsed, or the next more severe grade. When it comes due
the condition is evaluated at the clock's time, exactly as if an uplink had
arrived then. A status change that arrives later with an earlier device time
still updates the connectors and takes effect at the next uplink.
"""

from __future__ import annotations

from alerts.conditions import state_seconds
from alerts.lifecycle import NS, Compiled, Op, step
from alerts.rules import StateDuration
from alerts.silence import DeadlineHeap
from alerts.state import FIRING, PENDING, DeviceState


def next_deadline(c: Compiled, ds: DeviceState) -> int | None:
    """Device time at which the rule's lifecycle can next move without an uplink (or None)."""
    cond = c.rule.condition
    assert isinstance(cond, StateDuration)
    since = [t for state, t in ds.connectors.values() if state in cond.states]
    rs = ds.rules.get(c.rule.id)
    if not since or rs is None:
        return None
    start = min(since)  # the longest-held connector sets the value
    candidates = [start + int(thr * NS) + 1 for grade, thr in c.thresholds  # strictly beyond
                  if rs.phase != FIRING or grade < rs.grade]
    if rs.phase == PENDING:
        candidates.append(rs.since_ns + c.for_ns)
    future = [t for t in candidates if t > rs.last_ns]
    return min(future) if future else None


class DurationTimers:
    def __init__(self) -> None:
        self.heap = DeadlineHeap()

    def schedule(self, c: Compiled, device_id: str, ds: DeviceState) -> None:
        deadline = next_deadline(c, ds)
        if deadline is not None:
            self.heap.schedule(f"{c.rule.id}\x00{device_id}", deadline)

    def due(self, now_ns: int, devices: dict[str, DeviceState], rules: dict[str, Compiled],
            flap_window_ns: int, flap_max: int) -> list[Op]:
        ops: list[Op] = []
        for key in self.heap.pop_due(now_ns):
            rule_id, _, device_id = key.partition("\x00")
            ds, c = devices.get(device_id), rules.get(rule_id)
            if ds is None or c is None or not isinstance(c.rule.condition, StateDuration):
                continue  # device revoked or rule gone since
            value = state_seconds(ds.connectors, c.rule.condition.states, now_ns)
            ops += step(c, device_id, ds.rule(rule_id), now_ns, value, flap_window_ns=flap_window_ns,
                        flap_max=flap_max)
            self.schedule(c, device_id, ds)
        return ops
