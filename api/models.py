"""Response and request bodies of the API (pydantic), separate from storage's records."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

GRADE_NAMES = {1: "red", 2: "orange", 3: "yellow", 4: "blue"}


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class LatestValueOut(_Out):
    metric: str
    time: datetime
    value: float


class DeviceOut(_Out):
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
    active: bool
    status: Literal["online", "late", "offline"]
    last_seen: datetime | None
    metadata: dict[str, Any]


class DevicePage(BaseModel):
    items: list[DeviceOut]
    next_cursor: str | None


class HealthOut(_Out):
    time: datetime
    rsrp_dbm: float | None
    sinr_db: float | None
    ce_level: int | None
    battery_v: float | None


class AlertOut(_Out):
    alert_id: int
    rule_id: str
    device_id: str
    site_id: str | None
    condition: str
    metric: str | None
    state: str
    grade: int
    grade_name: str = ""
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

    def model_post_init(self, _context: Any) -> None:
        self.grade_name = GRADE_NAMES.get(self.grade, "")


class DeviceDetail(BaseModel):
    device: DeviceOut
    latest: list[LatestValueOut]
    health: HealthOut | None
    open_alerts: list[AlertOut]


class DeviceLatest(BaseModel):
    device_id: str
    status: Literal["online", "late", "offline"]
    last_seen: datetime | None
    values: list[LatestValueOut]


class LatestPage(BaseModel):
    items: list[DeviceLatest]
    next_cursor: str | None


class SeriesOut(BaseModel):
    """Parallel arrays (``t``, ``v``), one entry per bucket with data."""

    device_id: str
    metric: str
    agg: str
    bucket_s: float
    source: str = Field(description="raw or readings_1h: what answered")
    from_: datetime = Field(alias="from")
    to: datetime
    t: list[datetime]
    v: list[float]
    model_config = ConfigDict(populate_by_name=True)


class DeviceCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    device_id: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
    kind: str = Field(min_length=1, max_length=100)
    profile: str = Field(min_length=1, max_length=100)
    network: str = Field(min_length=1, max_length=100)
    site_id: str | None = Field(default=None, max_length=200)
    township: str = Field(max_length=200)
    district: str = Field(max_length=200)
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)
    report_interval_s: float = Field(gt=0, le=86_400 * 30)
    metadata: dict[str, Any] = Field(default_factory=dict)


class DeviceUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    kind: str | None = Field(default=None, min_length=1, max_length=100)
    profile: str | None = Field(default=None, min_length=1, max_length=100)
    network: str | None = Field(default=None, min_length=1, max_length=100)
    site_id: str | None = Field(default=None, max_length=200)
    township: str | None = Field(default=None, max_length=200)
    district: str | None = Field(default=None, max_length=200)
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)
    report_interval_s: float | None = Field(default=None, gt=0, le=86_400 * 30)
    metadata: dict[str, Any] | None = None
    active: bool | None = None


class ImportResult(BaseModel):
    sites: int
    devices: int
