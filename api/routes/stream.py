"""Server-Sent Events: alert transitions (by district and grade) and one device's readings.

Keep-alive comments every ``api_sse_ping_s``; a client that cannot take events
as fast as they come is dropped (bounded buffer, ``dropped`` event) and a send
that blocks longer than ``api_sse_send_timeout_s`` ends the stream; stopping the
API ends every stream.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from sse_starlette import EventSourceResponse

from api.deps import ConnDep, HubDep, SettingsDep, ThresholdsDep, Viewer
from api.errors import ERRORS, NOT_FOUND, not_found
from api.live import GRADES, LiveHub, Subscription
from api.routes import V1
from storage import api_devices

router = APIRouter(prefix=f"{V1}/stream", tags=["live"], responses=ERRORS)
_SSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "an event stream"}}


async def _events(request: Request, hub: LiveHub, sub: Subscription,
                  event: str) -> AsyncIterator[dict[str, Any]]:
    metrics = request.app.state.metrics
    metrics.sse_clients.inc()
    try:
        yield {"event": "hello", "data": "{}"}
        while True:
            item = await sub.next()
            if item is None:
                if sub.dropped:
                    yield {"event": "dropped", "data": json.dumps({"reason": "client too slow; reconnect"})}
                return
            yield {"event": event, "data": item}  # JSON, encoded once by the hub
    finally:
        hub.unsubscribe(sub)
        metrics.sse_clients.dec()


def _response(request: Request, hub: LiveHub, sub: Subscription, event: str,
              settings: SettingsDep) -> EventSourceResponse:
    return EventSourceResponse(_events(request, hub, sub, event), ping=settings.api_sse_ping_s,
                               send_timeout=settings.api_sse_send_timeout_s)


@router.get("/alerts", response_class=EventSourceResponse, responses=_SSE)
async def stream_alerts(
    request: Request, _: Viewer, hub: HubDep, settings: SettingsDep,
    district: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    grade: Annotated[Literal["red", "orange", "yellow", "blue"] | None,
                     Query(description="this grade or more severe")] = None,
) -> EventSourceResponse:
    """Alert transitions as the engine publishes them (event ``alert``)."""
    sub = hub.subscribe_alerts(district, GRADES[grade] if grade else None)
    return _response(request, hub, sub, "alert", settings)


@router.get("/devices/{device_id}/readings", response_class=EventSourceResponse,
            responses={**_SSE, **NOT_FOUND})
async def stream_readings(
    request: Request, device_id: Annotated[str, Path(min_length=1, max_length=200)], _: Viewer,
    hub: HubDep, conn: ConnDep, th: ThresholdsDep, settings: SettingsDep,
) -> EventSourceResponse:
    """One device's uplinks as they pass the readings topic (event ``readings``)."""
    if await api_devices.get_device(conn, device_id, th) is None:
        raise not_found(f"device {device_id!r}")
    sub = hub.subscribe_device(device_id)
    return _response(request, hub, sub, "readings", settings)
