"""FastAPI dependencies: settings, a database connection, the caller's key and role checks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Query, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from psycopg_pool import AsyncConnectionPool

from api.auth import KeyCache, Principal, RateLimiter, token_digest
from api.errors import unprocessable
from api.live import LiveHub
from api.settings import ApiSettings
from storage import apikeys
from storage.api_devices import Thresholds
from storage.db import Conn

_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer csk_...")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="X-API-Key: csk_...")


def get_settings(request: Request) -> ApiSettings:
    settings: ApiSettings = request.app.state.settings
    return settings


def get_pool(request: Request) -> AsyncConnectionPool:
    pool: AsyncConnectionPool = request.app.state.pool
    return pool


def get_hub(request: Request) -> LiveHub:
    hub: LiveHub | None = request.app.state.hub
    if hub is None:
        raise HTTPException(503, detail="live streams are off (CITYSENSE_API_LIVE) or Kafka is unreachable")
    return hub


async def get_conn(pool: Annotated[AsyncConnectionPool, Depends(get_pool)]) -> AsyncIterator[Conn]:
    """A pooled connection in autocommit: reads see fresh data, and the storage functions that
    write open their own transactions."""
    async with pool.connection(timeout=5) as conn:
        await conn.set_autocommit(True)
        yield conn


SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
ConnDep = Annotated[Conn, Depends(get_conn)]
HubDep = Annotated[LiveHub, Depends(get_hub)]


def get_thresholds(settings: SettingsDep) -> Thresholds:
    return Thresholds(settings.api_late_factor, settings.api_offline_factor)


ThresholdsDep = Annotated[Thresholds, Depends(get_thresholds)]


def page_size(settings: SettingsDep, limit: Annotated[int | None, Query(ge=1)] = None) -> int:
    """A list route's page size: ``limit``, bounded by the settings (422 beyond, not a slow query)."""
    if limit is None:
        return min(settings.api_page_default, settings.api_page_max)
    if limit > settings.api_page_max:
        raise unprocessable(["query", "limit"], f"limit may be at most {settings.api_page_max}")
    return limit


PageSize = Annotated[int, Depends(page_size)]
Cursor = Annotated[str | None, Query(max_length=500, description="next_cursor of the previous page")]


async def get_principal(
    request: Request,
    pool: Annotated[AsyncConnectionPool, Depends(get_pool)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    header: Annotated[str | None, Security(_header)],
) -> Principal:
    token = bearer.credentials if bearer else header
    if not token:
        raise HTTPException(401, detail="an API key is required (Authorization: Bearer <key> or X-API-Key)",
                            headers={"WWW-Authenticate": "Bearer"})
    cache: KeyCache = request.app.state.key_cache
    digest = token_digest(token)
    hit, principal = cache.get(digest)
    if not hit:
        async with pool.connection(timeout=5) as conn:
            principal = cache.put(digest, await apikeys.authenticate(conn, token))
    if principal is None:
        raise HTTPException(401, detail="unknown or revoked API key", headers={"WWW-Authenticate": "Bearer"})
    limiter: RateLimiter = request.app.state.limiter
    wait = limiter.take(principal.key_id)
    if wait > 0:
        raise HTTPException(429, detail=f"rate limit of key {principal.name!r} exceeded; "
                                        f"retry in {wait:.2f} s",
                            headers={"Retry-After": str(max(1, round(wait)))})
    return principal


def require(role: str) -> Callable[..., Coroutine[Any, Any, Principal]]:
    """A dependency that lets in keys of ``role`` or higher (403 otherwise)."""

    async def check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if not principal.may(role):
            raise HTTPException(
                403, detail=f"this needs the {role} role; key {principal.name!r} is {principal.role}")
        return principal

    return check


Viewer = Annotated[Principal, Depends(require("viewer"))]
Operator = Annotated[Principal, Depends(require("operator"))]
Admin = Annotated[Principal, Depends(require("admin"))]
