"""The county at a glance: overview counts and the aggregated map."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Request

from api.cache import SharedCache
from api.city_models import GridCellOut, MapOut, Overview, SiteOut, StatusCountOut
from api.deps import ConnDep, SettingsDep, ThresholdsDep, Viewer
from api.errors import ERRORS
from api.models import GRADE_NAMES
from api.routes import V1
from storage import api_city, queries
from storage.api_devices import Thresholds
from storage.db import Conn

log = logging.getLogger(__name__)
router = APIRouter(prefix=V1, tags=["city"], responses=ERRORS)


async def _overview(conn: Conn, th: Thresholds, request: Request) -> Overview:
    now = datetime.now(UTC)
    counts = await api_city.status_counts(conn, th)
    totals = {"online": 0, "late": 0, "offline": 0}
    for c in counts:
        totals[c.status] = totals.get(c.status, 0) + c.count
    totals["total"] = sum(c.count for c in counts)
    hub = request.app.state.hub
    if hub is not None and hub.running:
        rate, source = hub.uplinks_per_s(), "readings topic, last 10 s"
    else:
        rate, source = await api_city.heard_recently(conn, 60) / 60.0, "devices heard in the last minute / 60"
    since, _ = queries.covering(now - timedelta(hours=1), now, timedelta(hours=1))
    readings = await queries.reading_counts(conn, "district", now - timedelta(hours=1), now)
    by_grade = await api_city.open_alerts_by_grade(conn)
    bridges = await api_city.sites_with_grade(conn, "bridge", limit=10_000)
    bridge_counts = dict.fromkeys([*GRADE_NAMES.values(), "none"], 0)
    for b in bridges:
        bridge_counts[GRADE_NAMES.get(b.worst_grade or 0, "none")] += 1
    chargers = {"available": 0, "charging": 0, "faulted": 0, "offline": 0, "other": 0}
    chargers.update(await api_city.charger_counts(conn, th))
    return Overview(
        generated_at=now, devices=[StatusCountOut(kind=c.kind, district=c.district, status=c.status,
                                                  count=c.count) for c in counts],
        totals=totals, uplinks_per_s=round(rate, 3), uplinks_source=source,
        readings_recent=sum(readings.values()), readings_since=since,
        open_alerts_by_grade={name: by_grade.get(g, 0) for g, name in GRADE_NAMES.items()},
        chargers=chargers, bridges_by_grade=bridge_counts)


async def _compute(request: Request, th: Thresholds) -> Overview:
    async with request.app.state.pool.connection(timeout=5) as conn:
        await conn.set_autocommit(True)
        result = await _overview(conn, th, request)
    request.app.state.overview_cache = (time.monotonic(), result)
    return result


async def _refresh(request: Request, th: Thresholds) -> None:
    try:
        await _compute(request, th)
    except Exception:  # the next request tries again; the stale answer stays
        log.warning("overview refresh failed", exc_info=True)
    finally:
        request.app.state.overview_task = None


@router.get("/overview", response_model=Overview)
async def overview(_: Viewer, settings: SettingsDep, th: ThresholdsDep, request: Request) -> Overview:
    """Devices by kind x district x status, uplinks per second now, readings since the start of
    the previous hour, open alerts by grade, charger connectors by state, bridges by worst
    open grade.

    Computed once per ``api_overview_cache_s`` per process and shared: a caller gets the last
    answer at once while one background refresh computes the next (stale by at most the
    refresh's own time), so 50 operators cost one computation, not 50."""
    state = request.app.state
    cached: tuple[float, Overview] | None = state.overview_cache
    if cached is None or settings.api_overview_cache_s == 0:
        async with state.overview_lock:  # the first callers wait for one computation
            cached = state.overview_cache
            if cached is None or settings.api_overview_cache_s == 0:
                return await _compute(request, th)
    if time.monotonic() - cached[0] >= settings.api_overview_cache_s and state.overview_task is None:
        state.overview_task = asyncio.create_task(_refresh(request, th))
    return cached[1]


@router.get("/map", response_model=MapOut)
async def city_map(
    _: Viewer, conn: ConnDep, th: ThresholdsDep, settings: SettingsDep, request: Request,
    cell_deg: Annotated[float, Query(ge=0.002, le=1.0, description="grid cell size in degrees")] = 0.02,
    kind: Annotated[str | None, Query(min_length=1, max_length=100)] = None,
) -> MapOut:
    """Devices counted per grid cell and status (never one point per device), and every bridge
    with its worst open grade. Shared by all callers for ``api_map_cache_s``."""
    async def compute() -> MapOut:
        cells = await api_city.status_grid(conn, th, cell_deg, kind)
        bridges = await api_city.sites_with_grade(conn, "bridge", limit=10_000)
        return MapOut(cell_deg=cell_deg,
                      cells=[GridCellOut(lat=c.lat, lon=c.lon, online=c.online, late=c.late,
                                         offline=c.offline) for c in cells],
                      bridges=[SiteOut.model_validate(b, from_attributes=True) for b in bridges])

    cache: SharedCache[MapOut] = request.app.state.map_cache
    return await cache.get((cell_deg, kind), settings.api_map_cache_s, compute)
