"""Device queries for the HTTP API: filtered keyset pages, detail, latest values, admin writes.

A device's status comes from its last uplink against its expected report
interval: ``online`` within ``late_factor`` x interval, ``late`` within
``offline_factor`` x interval, ``offline`` beyond that or never heard from.
Pages are keyset-paginated on ``device_id`` (``after``), never by offset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from psycopg import sql
from psycopg.types.json import Jsonb

from storage.db import Conn

Status = Literal["online", "late", "offline"]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Thresholds:
    late_factor: float = 1.5
    offline_factor: float = 3.0


@dataclass(frozen=True, slots=True)
class DeviceFilter:
    kind: str | None = None
    profile: str | None = None
    district: str | None = None
    township: str | None = None
    site_id: str | None = None
    status: Status | None = None
    text: str | None = None
    device_ids: tuple[str, ...] | None = None
    include_inactive: bool = False


@dataclass(frozen=True, slots=True)
class DeviceRow:
    device_id: str
    kind: str
    profile: str
    network: str
    site_id: str | None
    township: str
    district: str
    lat: float | None
    lon: float | None
    report_interval_s: float
    metadata: dict[str, Any]
    active: bool
    last_seen: datetime | None
    status: str
    latest: dict[str, tuple[datetime, float]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HealthRow:
    time: datetime
    rsrp_dbm: float | None
    sinr_db: float | None
    ce_level: int | None
    battery_v: float | None


def status_expr() -> sql.Composed:
    """SQL of a device's status; needs ``d`` (devices), ``s`` (device_state) and the
    ``late``/``offline`` parameters."""
    return sql.SQL(
        """CASE WHEN s.last_seen IS NULL THEN 'offline'
                WHEN s.last_seen >= now() - d.report_interval_s * %(late)s * interval '1 second' THEN 'online'
                WHEN s.last_seen >= now() - d.report_interval_s * %(offline)s * interval '1 second'
                     THEN 'late'
                ELSE 'offline' END""").format()


def filter_sql(f: DeviceFilter, params: dict[str, Any]) -> sql.Composable:
    where: list[sql.Composable] = []
    for column, value in (("kind", f.kind), ("profile", f.profile), ("district", f.district),
                          ("township", f.township), ("site_id", f.site_id)):
        if value is not None:
            where.append(sql.SQL("d.{c} = {p}").format(c=sql.Identifier(column), p=sql.Placeholder(column)))
            params[column] = value
    if f.status is not None:
        where.append(sql.SQL("{} = %(status)s").format(status_expr()))
        params["status"] = f.status
    if f.text:
        where.append(sql.SQL("strpos(lower(d.device_id), lower(%(text)s)) > 0"))
        params["text"] = f.text
    if f.device_ids is not None:
        where.append(sql.SQL("d.device_id = ANY(%(ids)s)"))
        params["ids"] = list(f.device_ids)
    if not f.include_inactive:
        where.append(sql.SQL("d.active"))
    return sql.SQL(" AND ").join(where) if where else sql.SQL("true")


def _latest(metrics: list[str] | None, times: list[int] | None,
            values: list[float] | None) -> dict[str, tuple[datetime, float]]:
    if not metrics or not times or not values:
        return {}
    return {m: (_EPOCH + timedelta(microseconds=t), v)
            for m, t, v in zip(metrics, times, values, strict=True)}


_SELECT = sql.SQL(
    """SELECT d.device_id, d.kind, d.profile, d.network, d.site_id, d.township, d.district, d.lat, d.lon,
              d.report_interval_s, d.metadata, d.active, s.last_seen, {status},
              s.latest_metrics, s.latest_times, s.latest_values
       FROM devices d LEFT JOIN device_state s USING (device_id)""")


def _row(r: tuple[Any, ...], with_latest: bool) -> DeviceRow:
    latest = _latest(r[14], r[15], r[16]) if with_latest else {}
    return DeviceRow(device_id=r[0], kind=r[1], profile=r[2], network=r[3], site_id=r[4], township=r[5],
                     district=r[6], lat=r[7], lon=r[8], report_interval_s=r[9], metadata=r[10], active=r[11],
                     last_seen=r[12], status=r[13], latest=latest)


async def list_devices(conn: Conn, f: DeviceFilter, th: Thresholds, *, after: str | None, limit: int,
                       with_latest: bool = False) -> list[DeviceRow]:
    """Up to ``limit`` devices after ``after`` in device-id order."""
    params: dict[str, Any] = {"late": th.late_factor, "offline": th.offline_factor, "limit": limit,
                              "after": after}
    query = sql.SQL("{sel} WHERE {where} AND (%(after)s::text IS NULL OR d.device_id > %(after)s)"
                    " ORDER BY d.device_id LIMIT %(limit)s").format(
        sel=_SELECT.format(status=status_expr()), where=filter_sql(f, params))
    cur = await conn.execute(query, params)
    return [_row(r, with_latest) for r in await cur.fetchall()]


async def get_device(conn: Conn, device_id: str, th: Thresholds) -> DeviceRow | None:
    params = {"late": th.late_factor, "offline": th.offline_factor, "id": device_id}
    cur = await conn.execute(sql.SQL("{} WHERE d.device_id = %(id)s").format(
        _SELECT.format(status=status_expr())), params)
    r = await cur.fetchone()
    return _row(r, True) if r else None


async def latest_health(conn: Conn, device_id: str) -> HealthRow | None:
    cur = await conn.execute(
        "SELECT time, rsrp_dbm, sinr_db, ce_level, battery_v FROM device_health"
        " WHERE device_id = %s ORDER BY time DESC LIMIT 1", (device_id,))
    r = await cur.fetchone()
    return HealthRow(*r) if r else None


async def site_exists(conn: Conn, site_id: str) -> bool:
    cur = await conn.execute("SELECT 1 FROM sites WHERE site_id = %s", (site_id,))
    return await cur.fetchone() is not None


_COLUMNS = ("kind", "profile", "network", "site_id", "township", "district", "lat", "lon",
            "report_interval_s", "metadata", "active")


async def insert_device(conn: Conn, device_id: str, values: dict[str, Any]) -> bool:
    """Register a device; False when the id is taken."""
    cols = [c for c in _COLUMNS if c in values]
    params = [Jsonb(values[c]) if c == "metadata" else values[c] for c in cols]
    query = sql.SQL(
        "INSERT INTO devices (device_id, {cols}) VALUES (%s, {ph}) ON CONFLICT DO NOTHING").format(
        cols=sql.SQL(", ").join(map(sql.Identifier, cols)),
        ph=sql.SQL(", ").join(sql.Placeholder() * len(cols)))
    async with conn.transaction():
        cur = await conn.execute(query, [device_id, *params])
        return cur.rowcount == 1


async def update_device(conn: Conn, device_id: str, values: dict[str, Any]) -> bool:
    """Change the given registry fields; False when no such device."""
    cols = [c for c in _COLUMNS if c in values]
    if not cols:
        cur = await conn.execute("SELECT 1 FROM devices WHERE device_id = %s", (device_id,))
        return await cur.fetchone() is not None
    params = [Jsonb(values[c]) if c == "metadata" else values[c] for c in cols]
    query = sql.SQL("UPDATE devices SET {sets}, updated_at = now() WHERE device_id = %s").format(
        sets=sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in cols))
    async with conn.transaction():
        cur = await conn.execute(query, [*params, device_id])
        return cur.rowcount == 1
