"""Open alerts of rules that no longer apply are resolved when the rules reload.

Removed or disabled rules: after each reload the engine resolves their open
alerts in the database, wherever their devices are evaluated, with a
transition by ``system`` and the reason ``rule removed/disabled``
(``storage.alerts_engine_sql.resolve_rules_gone``), and drops their rule
state here. A rule whose selector no longer picks a device: the engine that
owns the device resolves its open alert the same way (reason ``rule no
longer selects this device``). These transitions are recorded and published
but not sent to webhooks: the change was an operator's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from alerts.lifecycle import Compiled, Op
from alerts.state import INACTIVE, PENDING, PHASE_NAMES, DeviceState

REMOVED = "rule removed/disabled"
UNSELECTED = "rule no longer selects this device"


def retire(device_id: str, ds: DeviceState, applicable: set[str], current: Mapping[str, Compiled],
           now_ns: int) -> list[Op]:
    """Resolve (and forget) this device's rule states whose rule is not in ``applicable``."""
    ops: list[Op] = []
    for rule_id in [r for r in ds.rules if r not in applicable]:
        rs = ds.rules.pop(rule_id)
        c = current.get(rule_id)
        if rs.phase == INACTIVE or c is None:
            continue  # nothing open, or the rule is gone (resolve_rules_gone closes its alerts)
        action = "cancelled" if rs.phase == PENDING else "resolved"
        ops.append(Op(c, device_id, rs, action, PHASE_NAMES[rs.phase], "resolved", rs.grade, rs.value,
                      max(now_ns, rs.last_ns), notify=False, extra={"actor": "system", "reason": UNSELECTED}))
        rs.phase, rs.grade = INACTIVE, 0
    return ops


def retire_all(devices: Mapping[str, DeviceState], ids: Callable[[str], set[str]],
               current: Mapping[str, Compiled], now_ns: int) -> list[Op]:
    ops: list[Op] = []
    for device_id, ds in devices.items():
        if ds.rules:
            ops += retire(device_id, ds, ids(device_id), current, now_ns)
    return ops
