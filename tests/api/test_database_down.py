"""With the database gone, the API says so: /readyz 503 with why, a route 503 with a JSON
body, no 500 and no hang; with it back, both recover (the pool replaces dead connections)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import httpx
import psycopg
import pytest
from psycopg import sql

from api.app import create_app
from api.settings import ApiSettings
from storage import apikeys, migrations
from tests.api.conftest import ServerThread, _free_port, drop_database
from tests.conftest import ServiceEnv, _db_url

pytestmark = pytest.mark.services


@pytest.fixture
def small_db(service_env: ServiceEnv) -> Iterator[tuple[str, str, str]]:
    name = f"cs_api_down_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(service_env.database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = _db_url(service_env.database_url, name)

    async def prepare() -> str:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await migrations.migrate(conn, prefer_timescale=False)
            return (await apikeys.create_key(conn, "v", "viewer"))[1]

    try:
        yield url, name, asyncio.run(prepare())
    finally:
        with psycopg.connect(service_env.database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(name)))
        drop_database(service_env.database_url, name)


def _cut(admin_url: str, name: str, allow: bool) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
            sql.Identifier(name), sql.SQL("true" if allow else "false")))
        if not allow:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))


def test_database_down_is_503_and_recovers(small_db: tuple[str, str, str], service_env: ServiceEnv) -> None:
    url, name, key = small_db
    port = _free_port()
    settings = ApiSettings(database_url=url, api_port=port, api_live=False, api_key_cache_s=0)
    with ServerThread(create_app(settings), port), httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": key}, timeout=30) as c:
        assert c.get("/readyz").status_code == 200
        assert c.get("/api/v1/overview").status_code == 200
        _cut(service_env.database_url, name, allow=False)
        started = time.monotonic()
        ready = c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["database"].startswith("unreachable")
        down = c.get("/api/v1/devices")
        assert down.status_code == 503, down.text
        assert "database" in down.json()["detail"] and down.headers["retry-after"] == "5"
        assert time.monotonic() - started < 20  # bounded by the pool's wait, not a hang
        _cut(service_env.database_url, name, allow=True)
        deadline = time.monotonic() + 20
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the API did not recover"
            time.sleep(0.3)
        assert c.get("/api/v1/devices").status_code == 200
