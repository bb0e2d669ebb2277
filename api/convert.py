"""Storage records -> response models."""

from __future__ import annotations

from api.models import DeviceLatest, DeviceOut, LatestValueOut
from storage.api_devices import DeviceRow


def device_out(row: DeviceRow) -> DeviceOut:
    return DeviceOut.model_validate(row)


def latest_values(row: DeviceRow) -> list[LatestValueOut]:
    return [LatestValueOut(metric=m, time=t, value=v) for m, (t, v) in sorted(row.latest.items())]


def device_latest(row: DeviceRow) -> DeviceLatest:
    return DeviceLatest(device_id=row.device_id, status=row.status,
                        last_seen=row.last_seen, values=latest_values(row))
