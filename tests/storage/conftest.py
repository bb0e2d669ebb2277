"""Storage fixtures: a migrated database per backend, a pool, a sink.

``store`` is parametrised over both backends. The TimescaleDB case is
marked ``timescale`` and skipped, with the reason, when the extension is
not installed in the project's PostgreSQL (Debian's packages have none).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from storage import migrations, timescale
from storage.db import open_pool
from storage.readings_sink import ReadingsSink
from storage.schema import POSTGRES, TIMESCALE, Backend
from storage.settings import StorageSettings

NO_TIMESCALE = (
    "timescaledb extension not available in this PostgreSQL "
    "(pg_available_extensions has no 'timescaledb'); Timescale-path test skipped"
)


@dataclass
class Store:
    url: str
    pool: AsyncConnectionPool
    sink: ReadingsSink
    backend: Backend
    settings: StorageSettings


def storage_settings(**overrides: Any) -> StorageSettings:
    """Defaults without reading the environment, plus overrides."""
    return StorageSettings.model_construct(**overrides)


async def migrated(url: str, backend: Backend) -> None:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        if backend == TIMESCALE and not await timescale.available(conn):
            pytest.skip(NO_TIMESCALE)
        await migrations.migrate(conn, prefer_timescale=backend == TIMESCALE)
        if await migrations.backend(conn) != backend:
            pytest.skip(f"timescaledb is listed but this role cannot create it; {backend} path skipped")


@pytest.fixture(params=[POSTGRES, pytest.param(TIMESCALE, marks=pytest.mark.timescale)])
async def store(request: pytest.FixtureRequest, empty_database: str) -> AsyncIterator[Store]:
    backend: Backend = request.param
    await migrated(empty_database, backend)
    settings = storage_settings()
    pool = await open_pool(empty_database, max_size=2)
    try:
        yield Store(empty_database, pool, ReadingsSink(pool, settings), backend, settings)
    finally:
        await pool.close()


@pytest.fixture
async def pg_store(empty_database: str) -> AsyncIterator[Store]:
    """The plain-PostgreSQL path only (partitions, writer-maintained rollups)."""
    await migrated(empty_database, POSTGRES)
    settings = storage_settings()
    pool = await open_pool(empty_database, max_size=2)
    try:
        yield Store(empty_database, pool, ReadingsSink(pool, settings), POSTGRES, settings)
    finally:
        await pool.close()
