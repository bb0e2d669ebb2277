"""The device registry: sites and devices, imported from a scenario's exported JSON.

The JSON is validated once, here at the edge, with pydantic; the import is
an upsert in one transaction, so importing the same file twice changes
nothing and a changed file updates the rows it names.
"""

from __future__ import annotations

from typing import Any, Literal

from psycopg.types.json import Jsonb
from pydantic import BaseModel, ConfigDict, Field, model_validator

from citysense.device_ids import DEVICE_ID_PATTERN, MAX_DEVICE_ID_LEN
from storage.db import Conn

SiteKind = Literal["bridge", "charging_station", "monitoring_point"]


class _Edge(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, str_strip_whitespace=True)


class SiteIn(_Edge):
    site_id: str = Field(min_length=1)
    kind: SiteKind
    name: str
    township: str
    district: str
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)


class DeviceIn(_Edge):
    # The normaliser dead-letters any other id (bad_device_id): registering one would only
    # make a device that can never be stored.
    device_id: str = Field(min_length=1, max_length=MAX_DEVICE_ID_LEN, pattern=DEVICE_ID_PATTERN)
    kind: str = Field(min_length=1)
    profile: str = Field(min_length=1)
    network: str = Field(min_length=1)
    site_id: str | None = None
    township: str
    district: str
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)
    report_interval_s: float = Field(gt=0)
    credential_hash: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class Registry(_Edge):
    scenario: str
    seed: int
    sites: list[SiteIn] = Field(default_factory=list)
    devices: list[DeviceIn] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> Registry:
        site_ids = [s.site_id for s in self.sites]
        if len(set(site_ids)) != len(site_ids):
            raise ValueError("duplicate site_id in sites")
        device_ids = [d.device_id for d in self.devices]
        if len(set(device_ids)) != len(device_ids):
            raise ValueError("duplicate device_id in devices")
        known = set(site_ids)
        unknown = sorted({d.site_id for d in self.devices if d.site_id and d.site_id not in known})
        if unknown:
            raise ValueError(f"devices name unknown sites: {', '.join(unknown[:5])}")
        return self


def parse(text: str | bytes) -> Registry:
    """Validate an exported registry (raises pydantic.ValidationError with every problem)."""
    return Registry.model_validate_json(text)


_UPSERT_SITE = """INSERT INTO sites (site_id, kind, name, township, district, lat, lon)
    VALUES (%s, %s, %s, %s, %s, %s, %s)
    ON CONFLICT (site_id) DO UPDATE SET kind = excluded.kind, name = excluded.name,
        township = excluded.township, district = excluded.district, lat = excluded.lat,
        lon = excluded.lon, updated_at = now()
    WHERE (sites.kind, sites.name, sites.township, sites.district, sites.lat, sites.lon)
        IS DISTINCT FROM (excluded.kind, excluded.name, excluded.township, excluded.district,
                          excluded.lat, excluded.lon)"""

_UPSERT_DEVICE = """INSERT INTO devices (device_id, kind, profile, network, site_id, township, district,
        lat, lon, report_interval_s, credential_hash, metadata, active)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, true)
    ON CONFLICT (device_id) DO UPDATE SET kind = excluded.kind, profile = excluded.profile,
        network = excluded.network, site_id = excluded.site_id, township = excluded.township,
        district = excluded.district, lat = excluded.lat, lon = excluded.lon,
        report_interval_s = excluded.report_interval_s, credential_hash = excluded.credential_hash,
        metadata = excluded.metadata, active = true, updated_at = now()
    WHERE (devices.kind, devices.profile, devices.network, devices.site_id, devices.township,
           devices.district, devices.lat, devices.lon, devices.report_interval_s,
           devices.credential_hash, devices.metadata, devices.active)
        IS DISTINCT FROM (excluded.kind, excluded.profile, excluded.network, excluded.site_id,
           excluded.township, excluded.district, excluded.lat, excluded.lon,
           excluded.report_interval_s, excluded.credential_hash, excluded.metadata, true)"""


async def import_registry(conn: Conn, registry: Registry) -> tuple[int, int]:
    """Upsert the registry's sites and devices in one transaction; returns (sites, devices) in the file."""
    async with conn.transaction(), conn.cursor() as cur:
        if registry.sites:
            await cur.executemany(_UPSERT_SITE, [
                (s.site_id, s.kind, s.name, s.township, s.district, s.lat, s.lon) for s in registry.sites
            ])
        if registry.devices:
            await cur.executemany(_UPSERT_DEVICE, [
                (d.device_id, d.kind, d.profile, d.network, d.site_id, d.township, d.district, d.lat,
                 d.lon, d.report_interval_s, d.credential_hash, Jsonb(d.metadata))
                for d in registry.devices
            ])
    return len(registry.sites), len(registry.devices)
