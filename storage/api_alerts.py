"""Alert listing for the HTTP API: ``storage.alerts_store``'s rows, with the filters the API
adds (district through the device registry, a time range, several states)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, LiteralString

from psycopg import sql
from psycopg.rows import class_row

from storage.alerts_store import AlertRow, IncidentRow
from storage.db import Conn

_COLS = sql.SQL(", ").join(sql.Identifier("a", f) for f in AlertRow.__dataclass_fields__)


@dataclass(frozen=True, slots=True)
class AlertFilter:
    state: str | None = None
    open_only: bool = False
    max_grade: int | None = None
    acknowledged: bool | None = None
    device_id: str | None = None
    site_id: str | None = None
    district: str | None = None
    since: datetime | None = None
    until: datetime | None = None


async def list_alerts(conn: Conn, f: AlertFilter, *, before_id: int | None, limit: int) -> list[AlertRow]:
    """Alerts matching every filter, newest first, keyset-paginated on ``alert_id``."""
    where: list[sql.Composable] = []
    params: list[Any] = []
    for column, value in (("state", f.state), ("acknowledged", f.acknowledged), ("device_id", f.device_id),
                          ("site_id", f.site_id)):
        if value is not None:
            where.append(sql.SQL("{} = %s").format(sql.Identifier("a", column)))
            params.append(value)
    if f.open_only:
        where.append(sql.SQL("a.state <> 'resolved'"))
    clauses: tuple[tuple[LiteralString, object], ...] = (
        ("a.grade <= %s", f.max_grade), ("a.started_at >= %s", f.since), ("a.started_at < %s", f.until),
        ("a.alert_id < %s", before_id))
    for clause, bound in clauses:
        if bound is not None:
            where.append(sql.SQL(clause))
            params.append(bound)
    if f.district is not None:
        where.append(sql.SQL(
            "EXISTS (SELECT FROM devices d WHERE d.device_id = a.device_id AND d.district = %s)"))
        params.append(f.district)
    query = sql.SQL("SELECT {cols} FROM alerts a WHERE {where} ORDER BY a.alert_id DESC LIMIT %s").format(
        cols=_COLS, where=sql.SQL(" AND ").join(where) if where else sql.SQL("true"))
    params.append(limit)
    async with conn.cursor(row_factory=class_row(AlertRow)) as cur:
        await cur.execute(query, params)
        return await cur.fetchall()


async def incident_alerts(conn: Conn, incident_id: int) -> list[AlertRow]:
    async with conn.cursor(row_factory=class_row(AlertRow)) as cur:
        await cur.execute(sql.SQL("SELECT {} FROM alerts a WHERE a.incident_id = %s ORDER BY a.alert_id DESC"
                                  " LIMIT 1000").format(_COLS), (incident_id,))
        return await cur.fetchall()


async def device_district(conn: Conn, device_id: str) -> str | None:
    cur = await conn.execute("SELECT district FROM devices WHERE device_id = %s", (device_id,))
    row = await cur.fetchone()
    return str(row[0]) if row else None


__all__ = ["AlertFilter", "AlertRow", "IncidentRow", "device_district", "incident_alerts", "list_alerts"]
