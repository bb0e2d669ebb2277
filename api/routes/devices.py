"""Devices: filtered pages, detail, latest values; registry writes for admins."""

from __future__ import annotations

from typing import Annotated, Literal

import psycopg
from fastapi import APIRouter, Body, HTTPException, Path, Query

from api import pagination
from api.convert import device_latest, device_out, latest_values
from api.deps import Admin, ConnDep, Cursor, PageSize, ThresholdsDep, Viewer
from api.errors import ERRORS, NOT_FOUND, ErrorBody, not_found, unprocessable
from api.models import (
    AlertOut,
    DeviceCreate,
    DeviceDetail,
    DeviceLatest,
    DeviceOut,
    DevicePage,
    DeviceUpdate,
    HealthOut,
    ImportResult,
    LatestPage,
)
from api.routes import V1
from storage import api_alerts, api_devices, registry
from storage.api_devices import DeviceFilter

router = APIRouter(prefix=f"{V1}/devices", tags=["devices"], responses=ERRORS)
latest_router = APIRouter(prefix=V1, tags=["devices"], responses=ERRORS)

DeviceId = Annotated[str, Path(min_length=1, max_length=200)]
Text = Annotated[str | None, Query(min_length=1, max_length=200)]


def _filter(kind: str | None, profile: str | None, district: str | None, township: str | None,
            site: str | None, status: Literal["online", "late", "offline"] | None,
            q: str | None) -> DeviceFilter:
    return DeviceFilter(kind=kind, profile=profile, district=district, township=township, site_id=site,
                        status=status, text=q)


@router.get("", response_model=DevicePage)
async def list_devices(
    _: Viewer, conn: ConnDep, th: ThresholdsDep, n: PageSize,
    kind: Text = None, profile: Text = None, district: Text = None, township: Text = None,
    site: Text = None, status: Literal["online", "late", "offline"] | None = None,
    q: Annotated[str | None, Query(min_length=1, max_length=100, description="part of the device id")] = None,
    cursor: Cursor = None,
) -> DevicePage:
    """Active devices matching every filter, in device-id order, one page at a time."""
    f = _filter(kind, profile, district, township, site, status, q)
    rows = await api_devices.list_devices(conn, f, th,
                                          after=pagination.decode(cursor, str), limit=n)
    nxt = pagination.encode(rows[-1].device_id) if len(rows) == n else None
    return DevicePage(items=[device_out(r) for r in rows], next_cursor=nxt)


@router.get("/{device_id}", response_model=DeviceDetail, responses=NOT_FOUND)
async def get_device(device_id: DeviceId, _: Viewer, conn: ConnDep, th: ThresholdsDep) -> DeviceDetail:
    """Registry entry, status, latest values, radio and battery health, open alerts."""
    row = await api_devices.get_device(conn, device_id, th)
    if row is None:
        raise not_found(f"device {device_id!r}")
    health = await api_devices.latest_health(conn, device_id)
    alerts = await api_alerts.list_alerts(conn, api_alerts.AlertFilter(device_id=device_id, open_only=True),
                                          before_id=None, limit=100)
    return DeviceDetail(device=device_out(row), latest=latest_values(row),
                        health=HealthOut.model_validate(health) if health else None,
                        open_alerts=[AlertOut.model_validate(a) for a in alerts])


@router.get("/{device_id}/latest", response_model=DeviceLatest, responses=NOT_FOUND)
async def get_latest(device_id: DeviceId, _: Viewer, conn: ConnDep, th: ThresholdsDep) -> DeviceLatest:
    row = await api_devices.get_device(conn, device_id, th)
    if row is None:
        raise not_found(f"device {device_id!r}")
    return device_latest(row)


@latest_router.get("/latest", response_model=LatestPage)
async def list_latest(
    _: Viewer, conn: ConnDep, th: ThresholdsDep, n: PageSize,
    kind: Text = None, district: Text = None, township: Text = None, site: Text = None,
    device: Annotated[list[str] | None, Query(max_length=100, description="device ids (repeat; at most 100)")]
    = None,
    cursor: Cursor = None,
) -> LatestPage:
    """Latest values of many devices (the ids given, or those matching the filters), one page at
    a time; unknown ids are left out."""
    if device is not None and any(not d or len(d) > 200 for d in device):
        raise unprocessable(["query", "device"], "a device id is 1 to 200 characters")
    f = DeviceFilter(kind=kind, district=district, township=township, site_id=site,
                     device_ids=tuple(device) if device is not None else None)
    rows = await api_devices.list_devices(conn, f, th, after=pagination.decode(cursor, str), limit=n,
                                          with_latest=True)
    nxt = pagination.encode(rows[-1].device_id) if len(rows) == n else None
    return LatestPage(items=[device_latest(r) for r in rows], next_cursor=nxt)


async def _check_site(conn: ConnDep, site_id: str | None) -> None:
    if site_id is not None and not await api_devices.site_exists(conn, site_id):
        raise unprocessable(["body", "site_id"], f"unknown site {site_id!r}")


@router.post("", response_model=DeviceOut, status_code=201,
             responses={409: {"model": ErrorBody, "description": "the device id is taken"}})
async def register_device(body: DeviceCreate, _: Admin, conn: ConnDep, th: ThresholdsDep) -> DeviceOut:
    """Register one device (admin)."""
    await _check_site(conn, body.site_id)
    values = body.model_dump(exclude={"device_id"})
    if not await api_devices.insert_device(conn, body.device_id, values):
        raise HTTPException(409, detail=f"device {body.device_id!r} exists; PATCH it instead")
    row = await api_devices.get_device(conn, body.device_id, th)
    assert row is not None
    return device_out(row)


@router.patch("/{device_id}", response_model=DeviceOut, responses=NOT_FOUND)
async def update_device(device_id: DeviceId, body: DeviceUpdate, _: Admin, conn: ConnDep,
                        th: ThresholdsDep) -> DeviceOut:
    """Change registry fields of a device (admin); ``active: false`` deactivates it."""
    values = body.model_dump(exclude_unset=True)
    for required in ("kind", "profile", "network", "township", "district", "report_interval_s",
                     "metadata", "active"):
        if required in values and values[required] is None:
            raise unprocessable(["body", required], "may not be null")
    if "site_id" in values:
        await _check_site(conn, values["site_id"])
    if not await api_devices.update_device(conn, device_id, values):
        raise not_found(f"device {device_id!r}")
    row = await api_devices.get_device(conn, device_id, th)
    assert row is not None
    return device_out(row)


@router.delete("/{device_id}", response_model=DeviceOut, responses=NOT_FOUND)
async def deactivate_device(device_id: DeviceId, _: Admin, conn: ConnDep, th: ThresholdsDep) -> DeviceOut:
    """Deactivate a device (admin): it stays in the registry and its data stays, but it leaves
    lists, counts and the map."""
    if not await api_devices.update_device(conn, device_id, {"active": False}):
        raise not_found(f"device {device_id!r}")
    row = await api_devices.get_device(conn, device_id, th)
    assert row is not None
    return device_out(row)


@router.post("/import", response_model=ImportResult)
async def import_devices(body: Annotated[registry.Registry, Body()], _: Admin, conn: ConnDep) -> ImportResult:
    """Upsert sites and devices from a ``citysense scenario export`` document (admin), all or nothing."""
    try:
        sites, devices = await registry.import_registry(conn, body)
    except psycopg.errors.ForeignKeyViolation as exc:
        detail = exc.diag.message_detail or ""
        raise unprocessable(["body", "devices"],
                            f"a device names a site that does not exist: {detail}") from exc
    return ImportResult(sites=sites, devices=devices)
