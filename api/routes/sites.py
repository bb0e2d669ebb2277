"""Sites and bridge health: each bridge's channels with their latest values and open alerts."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path

from api import pagination
from api.city_models import SiteDetail, SiteOut, SitePage
from api.convert import device_latest
from api.deps import ConnDep, Cursor, PageSize, ThresholdsDep, Viewer
from api.errors import ERRORS, NOT_FOUND, not_found
from api.models import AlertOut
from api.routes import V1
from storage import api_alerts, api_city, api_devices
from storage.api_devices import DeviceFilter, Thresholds
from storage.db import Conn

router = APIRouter(prefix=V1, tags=["sites"], responses=ERRORS)
SiteKind = Literal["bridge", "charging_station", "monitoring_point"]


@router.get("/sites", response_model=SitePage)
async def list_sites(
    _: Viewer, conn: ConnDep, n: PageSize, kind: SiteKind | None = None,
    cursor: Cursor = None,
) -> SitePage:
    rows = await api_city.sites_with_grade(conn, kind, after=pagination.decode(cursor, str), limit=n)
    nxt = pagination.encode(rows[-1].site_id) if len(rows) == n else None
    return SitePage(items=[SiteOut.model_validate(r, from_attributes=True) for r in rows], next_cursor=nxt)


async def _detail(conn: Conn, site_id: str, th: Thresholds) -> SiteDetail | None:
    site = await api_city.get_site(conn, site_id)
    if site is None:
        return None
    channels = await api_devices.list_devices(conn, DeviceFilter(site_id=site_id), th, after=None, limit=500,
                                              with_latest=True)
    alerts = await api_alerts.list_alerts(conn, api_alerts.AlertFilter(site_id=site_id, open_only=True),
                                          before_id=None, limit=200)
    return SiteDetail(site=SiteOut.model_validate(site, from_attributes=True),
                      channels=[device_latest(c) for c in channels],
                      open_alerts=[AlertOut.model_validate(a) for a in alerts])


@router.get("/sites/{site_id}", response_model=SiteDetail, responses=NOT_FOUND)
async def get_site(site_id: Annotated[str, Path(min_length=1, max_length=200)], _: Viewer, conn: ConnDep,
                   th: ThresholdsDep) -> SiteDetail:
    """A site with its devices (channels), their latest values and its open alerts."""
    detail = await _detail(conn, site_id, th)
    if detail is None:
        raise not_found(f"site {site_id!r}")
    return detail


@router.get("/bridges", response_model=list[SiteDetail])
async def bridge_health(_: Viewer, conn: ConnDep, th: ThresholdsDep) -> list[SiteDetail]:
    """Every bridge (a county has tens): channels, latest values, open alerts."""
    out: list[SiteDetail] = []
    for site in await api_city.sites_with_grade(conn, "bridge", limit=200):
        detail = await _detail(conn, site.site_id, th)
        if detail is not None:
            out.append(detail)
    return out
