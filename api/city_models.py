"""Response bodies of the city-wide routes: overview, map, sites, chargers."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from api.models import AlertOut, DeviceLatest


class StatusCountOut(BaseModel):
    kind: str
    district: str
    status: str
    count: int


class Overview(BaseModel):
    generated_at: datetime
    devices: list[StatusCountOut]
    totals: dict[str, int]
    uplinks_per_s: float
    uplinks_source: str
    readings_recent: int
    readings_since: datetime
    open_alerts_by_grade: dict[str, int]
    chargers: dict[str, int]
    bridges_by_grade: dict[str, int]


class GridCellOut(BaseModel):
    lat: float
    lon: float
    online: int
    late: int
    offline: int


class SiteOut(BaseModel):
    site_id: str
    name: str
    kind: str
    township: str
    district: str
    lat: float | None
    lon: float | None
    worst_grade: int | None
    open_alerts: int


class SitePage(BaseModel):
    items: list[SiteOut]
    next_cursor: str | None


class MapOut(BaseModel):
    cell_deg: float
    cells: list[GridCellOut]
    bridges: list[SiteOut]


class SiteDetail(BaseModel):
    site: SiteOut
    channels: list[DeviceLatest]
    open_alerts: list[AlertOut]


class ConnectorOut(BaseModel):
    site_id: str | None
    device_id: str
    connector: int
    state: str
    group: str
    time: datetime
    lat: float | None
    lon: float | None
    distance_m: float | None = None


class StationOut(BaseModel):
    site_id: str
    name: str
    counts: dict[str, int]
    connectors: list[ConnectorOut]
