"""A device's metric over time: ``metric``, ``from``, ``to``, ``bucket``, ``agg``
(ThingsBoard's telemetry parameters), from the rollups when the bucket allows."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from pydantic import AwareDatetime, TypeAdapter, ValidationError

from api.deps import ConnDep, SettingsDep, ThresholdsDep, Viewer
from api.errors import ERRORS, NOT_FOUND, not_found, unprocessable
from api.models import SeriesOut
from api.routes import V1
from storage import api_devices, queries

_DURATION: TypeAdapter[timedelta] = TypeAdapter(timedelta)


def parse_bucket(text: str) -> timedelta:
    """Seconds (``60``, ``0.5``) or an ISO 8601 duration (``PT1M``); 422 otherwise."""
    try:
        seconds = float(text)
    except ValueError:
        try:
            return _DURATION.validate_python(text.strip())
        except ValidationError:
            raise unprocessable(["query", "bucket"], "bucket: seconds (60) or ISO 8601 (PT1M)") from None
    if not math.isfinite(seconds) or abs(seconds) > 1e9:
        raise unprocessable(["query", "bucket"], "bucket: seconds out of range")
    return timedelta(seconds=seconds)


router = APIRouter(prefix=V1, tags=["devices"], responses=ERRORS)


@router.get("/devices/{device_id}/series", response_model=SeriesOut, responses=NOT_FOUND,
            response_model_by_alias=True)
async def series(
    device_id: Annotated[str, Path(min_length=1, max_length=200)], _: Viewer, conn: ConnDep,
    settings: SettingsDep, th: ThresholdsDep,
    metric: Annotated[str, Query(min_length=1, max_length=100)],
    from_: Annotated[AwareDatetime | None, Query(alias="from", description="default: to - 24 h")] = None,
    to: Annotated[AwareDatetime | None, Query(description="default: now")] = None,
    bucket: Annotated[str, Query(max_length=40, description="seconds (60) or ISO 8601 (PT1M)")] = "60",
    agg: Literal["avg", "min", "max", "sum", "count", "last"] = "avg",
) -> SeriesOut:
    """One value per bucket with data over the whole buckets touching ``[from, to)``. More than
    ``api_max_points`` buckets, or a range over ``api_max_range``, is refused with 422."""
    width = parse_bucket(bucket)
    end = to or datetime.now(UTC)
    start = from_ or end - timedelta(hours=24)
    if width < timedelta(seconds=1):
        raise unprocessable(["query", "bucket"], "bucket must be at least 1 second")
    if end <= start:
        raise unprocessable(["query", "to"], "to must be after from")
    if end - start > settings.api_max_range:
        raise unprocessable(["query", "from"], f"the range may be at most {settings.api_max_range}")
    points = (end - start) / width
    if points > settings.api_max_points:
        raise unprocessable(["query", "bucket"], f"{points:.0f} buckets requested; at most "
                            f"{settings.api_max_points} per request: widen the bucket or shorten the range")
    if await api_devices.get_device(conn, device_id, th) is None:
        raise not_found(f"device {device_id!r}")
    source = queries.choose_source(start, end, width)
    rows = await queries.series(conn, device_id, metric, start, end, width, agg, source=source)
    return SeriesOut(device_id=device_id, metric=metric, agg=agg, bucket_s=width.total_seconds(),
                     source=source, from_=start, to=end, t=[p.bucket for p in rows],
                     v=[p.value for p in rows])
