"""City-wide aggregates for the HTTP API: overview, map grid, bridges, chargers.

Everything here is aggregated in the database, so the answer's size depends on
the number of districts, map cells or sites, never on the number of devices.
Open alerts are those whose ``state`` is not ``resolved`` (migration 6).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import sql

from storage.api_devices import Thresholds, status_expr
from storage.db import Conn

# OCPP connector states, grouped the way an operator reads them.
CHARGING_STATES = ("Preparing", "Charging", "SuspendedEV", "SuspendedEVSE", "Finishing")
FAULTED_STATES = ("Faulted", "Unavailable")


@dataclass(frozen=True, slots=True)
class StatusCount:
    kind: str
    district: str
    status: str
    count: int


@dataclass(frozen=True, slots=True)
class GridCell:
    lat: float
    lon: float
    online: int
    late: int
    offline: int


@dataclass(frozen=True, slots=True)
class SiteGrade:
    site_id: str
    name: str
    kind: str
    township: str
    district: str
    lat: float | None
    lon: float | None
    worst_grade: int | None
    open_alerts: int


@dataclass(frozen=True, slots=True)
class Connector:
    site_id: str | None
    device_id: str
    connector: int
    state: str
    group: str
    time: datetime
    lat: float | None
    lon: float | None
    distance_m: float | None = None


def _p(th: Thresholds, **extra: Any) -> dict[str, Any]:
    return {"late": th.late_factor, "offline": th.offline_factor, **extra}


async def status_counts(conn: Conn, th: Thresholds) -> list[StatusCount]:
    """Active devices by kind x district x status."""
    cur = await conn.execute(sql.SQL(
        """SELECT d.kind, d.district, {st} AS status, count(*)
           FROM devices d LEFT JOIN device_state s USING (device_id) WHERE d.active
           GROUP BY 1, 2, 3 ORDER BY 1, 2, 3""").format(st=status_expr()), _p(th))
    return [StatusCount(*r) for r in await cur.fetchall()]


async def heard_recently(conn: Conn, seconds: float) -> int:
    """Devices whose last uplink is within the last ``seconds`` (an uplink-rate estimate)."""
    cur = await conn.execute(
        "SELECT count(*) FROM device_state WHERE last_seen >= now() - %s * interval '1 second'", (seconds,))
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def open_alerts_by_grade(conn: Conn) -> dict[int, int]:
    cur = await conn.execute("SELECT grade, count(*) FROM alerts WHERE state <> 'resolved' GROUP BY 1")
    return {int(g): int(n) for g, n in await cur.fetchall()}


def _group_expr() -> sql.Composed:
    return sql.SQL(
        """CASE WHEN {st} = 'offline' THEN 'offline' WHEN c.state = 'Available' THEN 'available'
                WHEN c.state = ANY(%(charging)s) THEN 'charging'
                WHEN c.state = ANY(%(faulted)s) THEN 'faulted' ELSE 'other' END""").format(st=status_expr())


async def charger_counts(conn: Conn, th: Thresholds) -> dict[str, int]:
    """Connectors available / charging / faulted / offline (the charger not heard from) / other."""
    cur = await conn.execute(sql.SQL(
        """SELECT {g}, count(*) FROM charger_connectors c JOIN devices d USING (device_id)
           LEFT JOIN device_state s USING (device_id) WHERE d.active GROUP BY 1""").format(g=_group_expr()),
        _p(th, charging=list(CHARGING_STATES), faulted=list(FAULTED_STATES)))
    return {str(k): int(n) for k, n in await cur.fetchall()}


async def sites_with_grade(conn: Conn, kind: str | None = None, *, after: str | None = None,
                           limit: int = 1000) -> list[SiteGrade]:
    """Sites (of a kind) with the worst grade of their open alerts (1 = red; None: no open alert)."""
    cur = await conn.execute(
        """SELECT s.site_id, s.name, s.kind, s.township, s.district, s.lat, s.lon,
                  min(a.grade), count(a.alert_id)
           FROM sites s LEFT JOIN alerts a ON a.site_id = s.site_id AND a.state <> 'resolved'
           WHERE (%(kind)s::text IS NULL OR s.kind = %(kind)s)
             AND (%(after)s::text IS NULL OR s.site_id > %(after)s)
           GROUP BY s.site_id ORDER BY s.site_id LIMIT %(limit)s""",
        {"kind": kind, "after": after, "limit": limit})
    return [SiteGrade(*r) for r in await cur.fetchall()]


async def get_site(conn: Conn, site_id: str) -> SiteGrade | None:
    cur = await conn.execute(
        """SELECT s.site_id, s.name, s.kind, s.township, s.district, s.lat, s.lon,
                  min(a.grade), count(a.alert_id)
           FROM sites s LEFT JOIN alerts a ON a.site_id = s.site_id AND a.state <> 'resolved'
           WHERE s.site_id = %s GROUP BY s.site_id""", (site_id,))
    r = await cur.fetchone()
    return SiteGrade(*r) if r else None


async def status_grid(conn: Conn, th: Thresholds, cell_deg: float, kind: str | None = None) -> list[GridCell]:
    """Active devices with coordinates, counted per map cell (cell centres) and status."""
    cur = await conn.execute(sql.SQL(
        """SELECT (floor(d.lat / %(cell)s) + 0.5) * %(cell)s, (floor(d.lon / %(cell)s) + 0.5) * %(cell)s,
                  count(*) FILTER (WHERE st = 'online'), count(*) FILTER (WHERE st = 'late'),
                  count(*) FILTER (WHERE st = 'offline')
           FROM (SELECT d.lat, d.lon, {st} AS st FROM devices d LEFT JOIN device_state s USING (device_id)
                 WHERE d.active AND d.lat IS NOT NULL AND d.lon IS NOT NULL
                   AND (%(kind)s::text IS NULL OR d.kind = %(kind)s)) d
           GROUP BY 1, 2 ORDER BY 1, 2""").format(st=status_expr()), _p(th, cell=cell_deg, kind=kind))
    return [GridCell(float(a), float(b), int(c), int(d), int(e)) for a, b, c, d, e in await cur.fetchall()]


async def connectors(conn: Conn, th: Thresholds, *, site_id: str | None = None) -> list[Connector]:
    cur = await conn.execute(sql.SQL(
        """SELECT d.site_id, c.device_id, c.connector, c.state, {g}, c.time, d.lat, d.lon
           FROM charger_connectors c JOIN devices d USING (device_id)
                LEFT JOIN device_state s USING (device_id)
           WHERE d.active AND (%(site)s::text IS NULL OR d.site_id = %(site)s)
           ORDER BY d.site_id, c.device_id, c.connector LIMIT 10000""").format(g=_group_expr()),
        _p(th, site=site_id, charging=list(CHARGING_STATES), faulted=list(FAULTED_STATES)))
    return [Connector(*r) for r in await cur.fetchall()]


async def nearest_available(conn: Conn, th: Thresholds, lat: float, lon: float, radius_m: float,
                            limit: int) -> list[Connector]:
    """Available connectors of chargers heard from, within ``radius_m`` of a point, nearest first
    (haversine; a bounding box first so the distance is computed for nearby chargers only)."""
    dlat = radius_m / 111_320.0
    dlon = dlat / max(0.01, abs(math.cos(math.radians(lat))))
    cur = await conn.execute(sql.SQL(
        """SELECT * FROM (
             SELECT d.site_id, c.device_id, c.connector, c.state, {g} AS grp, c.time, d.lat, d.lon,
                    2 * 6371000 * asin(sqrt(power(sin(radians(d.lat - %(lat)s) / 2), 2)
                        + cos(radians(%(lat)s)) * cos(radians(d.lat))
                          * power(sin(radians(d.lon - %(lon)s) / 2), 2)))
                      AS dist
             FROM charger_connectors c JOIN devices d USING (device_id)
                  LEFT JOIN device_state s USING (device_id)
             WHERE d.active AND d.lat BETWEEN %(lat)s - %(dlat)s AND %(lat)s + %(dlat)s
               AND d.lon BETWEEN %(lon)s - %(dlon)s AND %(lon)s + %(dlon)s) x
           WHERE grp = 'available' AND dist <= %(radius)s
           ORDER BY dist, device_id, connector LIMIT %(limit)s"""
    ).format(g=_group_expr()),
        _p(th, lat=lat, lon=lon, dlat=dlat, dlon=dlon, radius=radius_m, limit=limit,
           charging=list(CHARGING_STATES), faulted=list(FAULTED_STATES)))
    return [Connector(*r) for r in await cur.fetchall()]
