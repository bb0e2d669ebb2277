"""Queries on alerts, their transitions and incidents, for the API and the CLI.

Operator actions (acknowledge, resolve by hand) change the alert and record a
transition in the same transaction; the transition is left unpublished, so the
engine's publisher puts it on the alerts topic like the engine's own.
Listing is keyset-paginated on ``alert_id`` (``before_id``), newest first.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import sql
from psycopg.rows import class_row

from storage.db import Conn
from storage.exceptions import StorageError

ENGINE = "engine"


class AlertNotFoundError(StorageError):
    """No alert (or incident) with that id, or it cannot take that action in its state."""


@dataclass(frozen=True, slots=True)
class AlertRow:
    alert_id: int
    rule_id: str
    device_id: str
    site_id: str | None
    condition: str
    metric: str | None
    state: str
    grade: int
    value: float | None
    acknowledged: bool
    acknowledged_by: str | None
    acknowledged_at: datetime | None
    flapping: bool
    suppressed: str | None
    labels: dict[str, Any]
    incident_id: int | None
    started_at: datetime
    fired_at: datetime | None
    resolved_at: datetime | None
    resolved_by: str | None
    last_seq: int
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class TransitionRow:
    transition_id: int
    alert_id: int
    seq: int
    action: str
    from_state: str | None
    to_state: str
    grade: int
    acknowledged: bool
    value: float | None
    device_time: datetime | None
    actor: str
    reason: str
    at: datetime
    published_at: datetime | None


@dataclass(frozen=True, slots=True)
class IncidentRow:
    incident_id: int
    site_id: str
    state: str
    grade: int
    first_seen: datetime
    last_seen: datetime
    member_count: int
    acknowledged: bool
    acknowledged_by: str | None
    acknowledged_at: datetime | None
    closed_at: datetime | None
    updated_at: datetime


_ALERT_COLS = sql.SQL(", ").join(sql.Identifier(f) for f in AlertRow.__dataclass_fields__)
_TRANSITION_COLS = sql.SQL(", ").join(sql.Identifier(f) for f in TransitionRow.__dataclass_fields__)
_INCIDENT_COLS = sql.SQL(", ").join(sql.Identifier(f) for f in IncidentRow.__dataclass_fields__)


async def list_alerts(
    conn: Conn, *, state: str | None = None, open_only: bool = False, max_grade: int | None = None,
    acknowledged: bool | None = None, rule_id: str | None = None, device_id: str | None = None,
    site_id: str | None = None, incident_id: int | None = None, since: datetime | None = None,
    before_id: int | None = None, limit: int = 100,
) -> list[AlertRow]:
    """Alerts matching every filter given, newest first. ``max_grade=2`` means orange or red."""
    where: list[sql.Composable] = []
    params: list[Any] = []
    for column, value in (("state", state), ("acknowledged", acknowledged), ("rule_id", rule_id),
                          ("device_id", device_id), ("site_id", site_id), ("incident_id", incident_id)):
        if value is not None:
            where.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
            params.append(value)
    if open_only:
        where.append(sql.SQL("state <> 'resolved'"))
    if max_grade is not None:
        where.append(sql.SQL("grade <= %s"))
        params.append(max_grade)
    if since is not None:
        where.append(sql.SQL("started_at >= %s"))
        params.append(since)
    if before_id is not None:
        where.append(sql.SQL("alert_id < %s"))
        params.append(before_id)
    query = sql.SQL("SELECT {cols} FROM alerts {where} ORDER BY alert_id DESC LIMIT %s").format(
        cols=_ALERT_COLS,
        where=sql.SQL("WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL(""))
    params.append(limit)
    async with conn.cursor(row_factory=class_row(AlertRow)) as cur:
        await cur.execute(query, params)
        return await cur.fetchall()


async def get_alert(conn: Conn, alert_id: int) -> AlertRow | None:
    async with conn.cursor(row_factory=class_row(AlertRow)) as cur:
        await cur.execute(sql.SQL("SELECT {} FROM alerts WHERE alert_id = %s").format(_ALERT_COLS),
                          (alert_id,))
        return await cur.fetchone()


async def list_transitions(conn: Conn, alert_id: int) -> list[TransitionRow]:
    async with conn.cursor(row_factory=class_row(TransitionRow)) as cur:
        await cur.execute(sql.SQL("SELECT {} FROM alert_transitions WHERE alert_id = %s ORDER BY seq").format(
            _TRANSITION_COLS), (alert_id,))
        return await cur.fetchall()


async def list_incidents(conn: Conn, *, state: str | None = None, site_id: str | None = None,
                         before_id: int | None = None, limit: int = 100) -> list[IncidentRow]:
    where: list[sql.Composable] = []
    params: list[Any] = []
    for column, value in (("state", state), ("site_id", site_id)):
        if value is not None:
            where.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
            params.append(value)
    if before_id is not None:
        where.append(sql.SQL("incident_id < %s"))
        params.append(before_id)
    query = sql.SQL("SELECT {cols} FROM alert_incidents {where} ORDER BY incident_id DESC LIMIT %s").format(
        cols=_INCIDENT_COLS,
        where=sql.SQL("WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL(""))
    params.append(limit)
    async with conn.cursor(row_factory=class_row(IncidentRow)) as cur:
        await cur.execute(query, params)
        return await cur.fetchall()


async def get_incident(conn: Conn, incident_id: int) -> IncidentRow | None:
    async with conn.cursor(row_factory=class_row(IncidentRow)) as cur:
        await cur.execute(sql.SQL("SELECT {} FROM alert_incidents WHERE incident_id = %s").format(
            _INCIDENT_COLS), (incident_id,))
        return await cur.fetchone()


async def _record(conn: Conn, alert: AlertRow, action: str, actor: str, reason: str) -> None:
    await conn.execute(
        """INSERT INTO alert_transitions (alert_id, seq, action, from_state, to_state, grade,
               acknowledged, value, actor, reason)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
        (alert.alert_id, alert.last_seq, action, alert.state, alert.state, alert.grade,
         alert.acknowledged, alert.value, actor, reason))


async def acknowledge(conn: Conn, alert_id: int, actor: str, reason: str = "") -> AlertRow:
    """Acknowledge an alert (open or resolved); a no-op if already acknowledged."""
    async with conn.transaction(), conn.cursor(row_factory=class_row(AlertRow)) as cur:
        await cur.execute(sql.SQL(
            """UPDATE alerts SET acknowledged = true, acknowledged_by = %s, acknowledged_at = now(),
                   last_seq = last_seq + 1, updated_at = now()
               WHERE alert_id = %s AND NOT acknowledged RETURNING {}""").format(_ALERT_COLS),
            (actor, alert_id))
        row = await cur.fetchone()
        if row is None:
            existing = await get_alert(conn, alert_id)
            if existing is None:
                raise AlertNotFoundError(f"no alert {alert_id}")
            return existing
        await _record(conn, row, "acknowledged", actor, reason)
        return row


async def resolve(conn: Conn, alert_id: int, actor: str, reason: str = "") -> AlertRow:
    """Resolve an open alert by hand. The engine sees it resolved and starts afresh for
    that (rule, device): a value still over the threshold opens a new alert after ``for``."""
    async with conn.transaction():
        cur = await conn.execute(
            "SELECT state FROM alerts WHERE alert_id = %s AND state <> 'resolved' FOR UPDATE", (alert_id,))
        prev = await cur.fetchone()
        if prev is None:
            raise AlertNotFoundError(f"no open alert {alert_id}")
        async with conn.cursor(row_factory=class_row(AlertRow)) as rcur:
            await rcur.execute(sql.SQL(
                """UPDATE alerts SET state = 'resolved', resolved_at = now(), resolved_by = %s,
                       last_seq = last_seq + 1, updated_at = now()
                   WHERE alert_id = %s RETURNING {}""").format(_ALERT_COLS), (actor, alert_id))
            row = await rcur.fetchone()
        assert row is not None
        await conn.execute(
            """INSERT INTO alert_transitions (alert_id, seq, action, from_state, to_state, grade,
                   acknowledged, value, actor, reason)
               VALUES (%s, %s, 'resolved_by_hand', %s, 'resolved', %s, %s, %s, %s, %s)""",
            (row.alert_id, row.last_seq, prev[0], row.grade, row.acknowledged, row.value, actor, reason))
        return row


async def acknowledge_incident(conn: Conn, incident_id: int, actor: str) -> IncidentRow:
    """Acknowledge an incident and every unacknowledged member alert."""
    async with conn.transaction():
        members = await list_alerts(conn, incident_id=incident_id, acknowledged=False, limit=100_000)
        for member in members:
            await acknowledge(conn, member.alert_id, actor, f"incident {incident_id}")
        async with conn.cursor(row_factory=class_row(IncidentRow)) as cur:
            await cur.execute(sql.SQL(
                """UPDATE alert_incidents SET acknowledged = true, acknowledged_by = %s,
                       acknowledged_at = now(), updated_at = now()
                   WHERE incident_id = %s RETURNING {}""").format(_INCIDENT_COLS), (actor, incident_id))
            row = await cur.fetchone()
    if row is None:
        raise AlertNotFoundError(f"no incident {incident_id}")
    return row
