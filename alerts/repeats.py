"""``repeat_interval``: a firing alert nobody resolved is notified again.

Each notified firing alert has a repeat deadline (clock time of its last
notification + the rule's ``repeat_interval``) on a lazy heap, like silence
deadlines: a newer notification moves the due time without touching the
heap. When one comes due and the alert still fires (and is not flapping),
a ``repeated`` transition is recorded and notified with its own key. The
time of the last notification is part of the checkpointed rule state, so a
restart neither forgets a repeat nor sends it twice. Alerts at a site are
reminded through their own key too (the incident is not re-sent).
"""

from __future__ import annotations

from collections.abc import Mapping

from alerts.lifecycle import NS, Compiled, Op
from alerts.silence import DeadlineHeap
from alerts.state import FIRING, DeviceState

NOTIFYING = frozenset({"fired", "escalated", "deescalated", "repeated"})


class Repeats:
    def __init__(self) -> None:
        self.heap = DeadlineHeap()

    def noted(self, op: Op, now_ns: int) -> None:
        """Inside the checkpoint, before state is saved: this op notified at ``now_ns``."""
        if op.to_state == "firing" and op.action in NOTIFYING and op.notify:
            op.rs.notified_ns = now_ns

    def schedule(self, c: Compiled, device_id: str, ds: DeviceState) -> None:
        rs = ds.rules.get(c.rule.id)
        if rs is not None and rs.phase == FIRING and rs.notified_ns and c.rule.repeat_interval > 0:
            due = rs.notified_ns + int(c.rule.repeat_interval * NS)
            self.heap.schedule(f"{c.rule.id}\x00{device_id}", due)

    def due(self, now_ns: int, devices: Mapping[str, DeviceState], rules: Mapping[str, Compiled]) -> list[Op]:
        ops: list[Op] = []
        for key in self.heap.pop_due(now_ns):
            rule_id, _, device_id = key.partition("\x00")
            ds, c = devices.get(device_id), rules.get(rule_id)
            if ds is None or c is None:
                continue
            rs = ds.rules.get(rule_id)
            if rs is None or rs.phase != FIRING or not rs.notified_ns or rs.flapping:
                continue
            due = rs.notified_ns + int(c.rule.repeat_interval * NS)
            if due > now_ns:
                self.heap.schedule(key, due)  # notified again since: wait for the new time
                continue
            ops.append(Op(c, device_id, rs, "repeated", "firing", "firing", rs.grade, rs.value, now_ns))
        return ops
