"""Liveness, readiness and Prometheus metrics (no key needed; they reveal no data)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    status: str
    database: str
    kafka: str


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process answers."""
    return Health(status="ok")


@router.get("/readyz", response_model=Ready, responses={503: {"model": Ready}})
async def readyz(request: Request) -> JSONResponse:
    """The database answers, and Kafka does when live streams are on (503 otherwise)."""
    database = "ok"
    try:
        async with request.app.state.pool.connection(timeout=3) as conn:
            await asyncio.wait_for(conn.execute("SELECT 1"), timeout=3)
    except Exception as exc:  # noqa: BLE001  # any failure is "not ready", said in the body
        database = f"unreachable: {type(exc).__name__}"
    hub = request.app.state.hub
    if not request.app.state.settings.api_live:
        kafka = "disabled"
    elif hub is not None and await hub.kafka_reachable():
        kafka = "ok"
    else:
        kafka = "unreachable"
    ok = database == "ok" and kafka in ("ok", "disabled")
    body = Ready(status="ok" if ok else "unavailable", database=database, kafka=kafka)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    registry = request.app.state.metrics.registry
    hub = request.app.state.hub
    request.app.state.metrics.sse_clients.set(hub.subscribers if hub else 0)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
