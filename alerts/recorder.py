"""Turn the engine's transitions (:class:`Op`) into rows, inside the checkpoint transaction.

For each op: the alert row and its transition (``storage.alerts_engine_sql``);
for a firing alert at a site, its incident; and the notifications the op
earns, unless the alert is flapping (only the transition that starts it
notifies), inhibited (its device is offline: a silence alert of the same
device is firing) or silenced by an operator. A 'resolved' that overtakes
its own 'fired' still waiting out ``group_wait`` cancels it and sends
nothing: an alert that was over before anyone was told stays untold.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from time import time_ns

from alerts.directory import ActiveSilence, DeviceInfo
from alerts.grouping import Grouper
from alerts.lifecycle import NS, Op
from alerts.notify import NOTIFIED_ACTIONS, alert_rows, device_time, incident_rows
from alerts.rate_limits import RateCounters
from alerts.rules import Silence
from alerts.state import FIRING, DeviceState
from storage import alerts_engine_sql as q
from storage.db import Conn


class Recorder:
    def __init__(self, info: Callable[[str], DeviceInfo], state: Callable[[str], DeviceState | None],
                 silences: Callable[[], list[ActiveSilence]], *, incident_window_s: float,
                 group_wait_s: float, group_interval_s: float = 0.0,
                 clock: Callable[[], int] = time_ns) -> None:
        self._info = info
        self._state = state
        self._silences = silences
        self._incident_window_s = incident_window_s
        self.group_wait_s = group_wait_s
        self._clock = clock
        self.rate = RateCounters()
        self.grouper = Grouper(group_interval_s, clock)

    def _suppressed(self, op: Op, d: DeviceInfo) -> str | None:
        rule = op.compiled.rule
        if not isinstance(rule.condition, Silence):
            ds = self._state(op.device_id)
            if ds is not None and (any(
                    rs.phase == FIRING and rid != rule.id and self._is_silence_rule(rid)
                    for rid, rs in ds.rules.items()) or ds.offline[0] <= op.t_ns < ds.offline[1]):
                return "inhibited"  # offline now, or a moment of its offline period (buffered)
        now = datetime.now(UTC)
        if any(s.covers(rule.id, d, now) for s in self._silences()):
            return "silenced"
        limit = rule.rate_limit
        if (limit is not None and (op.action in NOTIFIED_ACTIONS or op.flapping)
                and self.rate.count(rule.id, self._clock(), int(limit.per * NS)) >= limit.count):
            return "rate_limited"
        return None

    silence_rule_ids: frozenset[str] = frozenset()

    def _is_silence_rule(self, rule_id: str) -> bool:
        return rule_id in self.silence_rule_ids

    async def record(self, conn: Conn, op: Op, outbox: list[q.OutboxIn]) -> int:
        """Record one op; returns the transition id (0 if nothing was recorded)."""
        d = self._info(op.device_id)
        rule = op.compiled.rule
        suppressed = self._suppressed(op, d)
        opening = op.from_state == "resolved"
        tin = q.TransitionIn(
            0 if opening else op.rs.alert_id, rule.id, op.device_id, d.site_id, rule.condition.type,
            rule.metric, op.action, op.from_state, op.to_state, op.grade, op.value, device_time(op.t_ns),
            dict(rule.labels), op.flapping or op.rs.flapping, suppressed, op.extra.get("reason", ""),
            op.extra.get("actor", "engine"))
        out = await q.record_transition(conn, tin)
        if out.gone:
            if op.to_state == "resolved":
                op.rs.alert_id = 0
                return 0
            # resolved by hand while the condition holds: a new alert carries on (not a silent gap)
            action = "fired" if op.to_state == "firing" else op.action
            out = await q.record_transition(conn, replace(
                tin, alert_id=0, from_state="resolved", action=action,
                reason="reopened: the condition still holds after a hand-resolve"))
        op.rs.alert_id = 0 if op.to_state == "resolved" else out.alert_id
        notify = (op.notify or op.flapping) and suppressed is None
        rows = await self._notifications(conn, op, out, d, notify)
        if rows and rule.rate_limit is not None:
            self.rate.sent(rule.id, self._clock())
        outbox += await self.grouper.place(conn, rows)  # now, so a later op of this checkpoint can cancel it
        return out.transition_id

    async def _notifications(self, conn: Conn, op: Op, out: q.TransitionOut, d: DeviceInfo,
                             notify: bool) -> list[q.OutboxIn]:
        wait = self.group_wait_s
        if op.flapping and notify:
            return alert_rows(op, out, d.site_id, "flapping", wait)
        if op.action not in NOTIFIED_ACTIONS:
            return []
        site = d.site_id
        if site is None:
            if not notify or (op.action == "resolved" and await q.cancel_unsent_fire(conn, out.alert_id)):
                return []
            return alert_rows(op, out, None, op.action, wait if op.action == "fired" else 0.0)
        if op.action == "repeated":  # a reminder of one member, not the incident again
            return alert_rows(op, out, site, "repeated", 0.0) if notify else []
        incident_id = out.incident_id
        if op.action == "fired":
            incident_id, event = await q.join_incident(conn, site, out.alert_id, op.grade,
                                                       device_time(op.t_ns), self._incident_window_s)
            if event != "joined" and notify:
                return incident_rows(op, out, site, incident_id, event, wait)
        elif incident_id is not None and op.action == "escalated":
            if await q.raise_incident(conn, incident_id, op.grade) and notify:
                return incident_rows(op, out, site, incident_id, "raised", 0.0)
        elif (incident_id is not None and op.action == "resolved"
              and await q.close_incident_if_done(conn, incident_id) and notify
              and not await q.cancel_unsent_incident(conn, incident_id)):
            return incident_rows(op, out, site, incident_id, "closed", 0.0)
        return []
