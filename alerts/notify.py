"""Notification payloads and the outbox rows that carry them to webhooks.

An alert's notification is keyed ``alert:<alert_id>:<seq>`` (the transition
it reports), an incident's ``incident:<incident_id>:<event>``: a receiver
that sees a key twice has seen the same notification twice. Alerts at a
site notify through their incident (one notification for 40 members);
alerts without a site notify on their own. The ordering key (outbox
``device_id``) is the device, or ``site:<id>`` for an incident; with
``group_interval`` on, the group (``alerts/grouping.py``).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

from alerts.lifecycle import NS, Op
from alerts.rules import GRADE_LABEL, Grade, Receiver
from storage.alerts_engine_sql import OutboxIn, TransitionOut

NOTIFIED_ACTIONS = frozenset({"fired", "escalated", "deescalated", "resolved", "repeated"})


def receiver_url(r: Receiver) -> str | None:
    if r.url:
        return r.url
    return os.environ.get(r.url_env) if r.url_env else None


def device_time(t_ns: int) -> datetime:
    return datetime.fromtimestamp(t_ns / NS, UTC)


def alert_payload(op: Op, out: TransitionOut, site_id: str | None, action: str) -> dict[str, Any]:
    rule = op.compiled.rule
    return {
        "version": 1, "kind": "alert", "action": action, "alert_id": out.alert_id, "seq": out.seq,
        "rule_id": rule.id, "rule_name": rule.name, "device_id": op.device_id, "site_id": site_id,
        "state": op.to_state, "grade": op.grade, "grade_name": GRADE_LABEL[Grade(op.grade)],
        "value": op.value, "metric": rule.metric, "device_time": device_time(op.t_ns).isoformat(),
        "acknowledged": out.acknowledged, "labels": dict(rule.labels), "incident_id": out.incident_id,
    }


def alert_rows(op: Op, out: TransitionOut, site_id: str | None, action: str,
               delay_s: float) -> list[OutboxIn]:
    payload = alert_payload(op, out, site_id, action)
    key = f"alert:{out.alert_id}:{out.seq}"
    return [OutboxIn(r.name, op.device_id, out.alert_id, out.incident_id, key, payload, delay_s)
            for r in op.compiled.receivers if receiver_url(r)]


def incident_rows(op: Op, out: TransitionOut, site_id: str, incident_id: int, event: str,
                  delay_s: float) -> list[OutboxIn]:
    """``event``: opened | raised | closed. The delivery worker adds the members at send time."""
    payload = alert_payload(op, out, site_id, f"incident_{event}")
    payload.update(kind="incident", incident_id=incident_id)
    key = f"incident:{incident_id}:{event}" + (f":{op.grade}" if event == "raised" else "")
    return [OutboxIn(r.name, f"site:{site_id}", None, incident_id, key, payload, delay_s)
            for r in op.compiled.receivers if receiver_url(r)]
