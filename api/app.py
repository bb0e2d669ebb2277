"""The API's composition: ``create_app(settings)`` builds a FastAPI app whose lifespan opens
the database pool and the live-stream consumer and closes them on shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from psycopg_pool import PoolTimeout

from api.auth import KeyCache, RateLimiter
from api.cache import SharedCache
from api.live import LiveHub
from api.metrics import ApiMetrics
from api.routes import alerts, chargers, city, devices, health, me, rules, series, silences, sites, stream
from api.settings import ApiSettings
from citysense.exceptions import ConfigurationError
from storage import api_alerts, migrations
from storage.db import open_pool
from storage.exceptions import StorageUnavailableError

log = logging.getLogger("citysense.api")


def _database_url(settings: ApiSettings) -> str:
    if settings.database_url is None:
        raise ConfigurationError("CITYSENSE_DATABASE_URL is not set")
    url = settings.database_url.get_secret_value()
    # Every statement of a request is bounded: a query over its time never holds a worker.
    timeout = f"-c statement_timeout={settings.api_statement_timeout_ms}"
    return psycopg.conninfo.make_conninfo(url, options=timeout)


async def _start_hub(app: FastAPI, settings: ApiSettings) -> None:
    if not settings.api_live or not settings.kafka_bootstrap:
        return
    pool = app.state.pool
    known: dict[str, str | None] = {}

    async def district_of(device_id: str) -> str | None:
        if device_id not in known:
            if len(known) > 200_000:
                known.clear()
            async with pool.connection(timeout=5) as conn:
                known[device_id] = await api_alerts.device_district(conn, device_id)
        return known[device_id]

    hub = LiveHub(settings.kafka_bootstrap, settings.topic_alerts, settings.topic_readings,
                  settings.api_sse_buffer, district_of, app.state.metrics.sse_dropped.inc)
    try:
        await hub.start()
    except Exception as exc:  # noqa: BLE001  # the API still serves queries without Kafka; readyz says so
        log.warning("live streams off: Kafka at %s unreachable (%s)", settings.kafka_bootstrap, exc)
        await hub.stop()
        return
    app.state.hub = hub


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: ApiSettings = app.state.settings
    pool = await open_pool(_database_url(settings), min_size=1, max_size=settings.api_pool_size)
    try:
        async with pool.connection() as conn:
            await migrations.require_current(conn)
        app.state.pool = pool
        await _start_hub(app, settings)
        log.info("API ready on %s:%s (live streams %s)", settings.api_host, settings.api_port,
                 "on" if app.state.hub else "off")
        yield
    finally:
        if app.state.hub is not None:
            await app.state.hub.stop()
            app.state.hub = None
        await pool.close()


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, psycopg.errors.QueryCanceled):
        detail = "the query took too long; narrow the filters or the range"
    else:
        detail = "the database is unavailable; retry later"
    log.warning("%s %s: %s", request.method, request.scope.get("path"), type(exc).__name__)
    return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": "5"})


async def _refused(request: Request, exc: Exception) -> JSONResponse:
    """A value the database can never store (a NUL character, an out-of-range number): the
    request's fault, so 422, not 500."""
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return JSONResponse({"detail": [{"loc": ["request"], "msg": f"a value cannot be stored: {msg}",
                                     "type": "value_error"}]}, status_code=422)


def create_app(settings: ApiSettings) -> FastAPI:
    app = FastAPI(title="citysense", version="1", lifespan=lifespan,
                  description="City status now, history on demand, alerts handled to the end.")
    app.state.settings = settings
    app.state.hub = None
    app.state.pool = None
    app.state.metrics = ApiMetrics()
    app.state.key_cache = KeyCache(settings.api_key_cache_s)
    app.state.limiter = RateLimiter(settings.api_rate_per_s, settings.api_rate_burst)
    app.state.overview_cache = None
    app.state.overview_lock = asyncio.Lock()
    app.state.overview_task = None
    app.state.map_cache = SharedCache[Any]()
    app.middleware("http")(app.state.metrics.middleware)
    for exc_type in (StorageUnavailableError, psycopg.OperationalError, PoolTimeout):
        app.add_exception_handler(exc_type, _unavailable)
    app.add_exception_handler(psycopg.DataError, _refused)
    app.include_router(health.router)
    for module in (me, devices, series, city, sites, chargers, alerts, silences, rules, stream):
        app.include_router(module.router)  # each router carries its /api/v1 prefix (metrics label by it)
    app.include_router(devices.latest_router)
    static = resources.files("api") / "static"
    app.mount("/", StaticFiles(directory=str(static), html=True), name="dashboard")
    return app
