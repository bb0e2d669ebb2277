"""Charging stations: connector availability per station, nearest available connectors."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.city_models import ConnectorOut, StationOut
from api.deps import ConnDep, ThresholdsDep, Viewer
from api.errors import ERRORS
from api.routes import V1
from storage import api_city

router = APIRouter(prefix=f"{V1}/chargers", tags=["chargers"], responses=ERRORS)


@router.get("/stations", response_model=list[StationOut])
async def stations(_: Viewer, conn: ConnDep, th: ThresholdsDep) -> list[StationOut]:
    """Every charging station with its connectors counted by available / charging / faulted /
    offline / other."""
    sites = {s.site_id: s for s in await api_city.sites_with_grade(conn, "charging_station", limit=10_000)}
    out: dict[str, StationOut] = {
        sid: StationOut(site_id=sid, name=s.name, counts={}, connectors=[]) for sid, s in sites.items()}
    for c in await api_city.connectors(conn, th):
        station = out.get(c.site_id or "")
        if station is None:
            continue
        station.counts[c.group] = station.counts.get(c.group, 0) + 1
        station.connectors.append(ConnectorOut.model_validate(c, from_attributes=True))
    return list(out.values())


@router.get("/nearest", response_model=list[ConnectorOut])
async def nearest(
    _: Viewer, conn: ConnDep, th: ThresholdsDep,
    lat: Annotated[float, Query(ge=-90, le=90)], lon: Annotated[float, Query(ge=-180, le=180)],
    radius_m: Annotated[float, Query(gt=0, le=50_000)] = 5_000,
    limit: Annotated[int, Query(ge=1, le=50)] = 10,
) -> list[ConnectorOut]:
    """Available connectors of chargers heard from, within ``radius_m`` of the point, nearest first."""
    rows = await api_city.nearest_available(conn, th, lat, lon, radius_m, limit)
    return [ConnectorOut.model_validate(r, from_attributes=True) for r in rows]
