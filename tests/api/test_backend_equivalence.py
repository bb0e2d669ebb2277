"""The routes answer the same on plain PostgreSQL and on TimescaleDB (the storage layer's
equivalence, extended to the API): two databases filled with the same county at the same
``now``, one API server on each, the same requests, the same bodies (floats to 9 digits).
Skipped, with the reason, where the timescaledb extension is not installed."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from api.app import create_app
from api.settings import ApiSettings
from storage.schema import POSTGRES, TIMESCALE
from tests.api.conftest import ServerThread, _free_port, drop_database
from tests.api.populate import County, populate
from tests.conftest import ServiceEnv, _db_url
from tests.storage.conftest import migrated
from tests.storage.factories import real_now

pytestmark = [pytest.mark.services, pytest.mark.timescale]
VOLATILE = {"generated_at", "uplinks_per_s", "uplinks_source", "updated_at", "acknowledged_at"}


def _normal(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.9g}")
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_normal(v) for v in value]
    return value


@pytest.fixture(scope="module")
def two_backends(service_env: ServiceEnv) -> Iterator[list[tuple[str, County]]]:
    names = [f"cs_api_eq_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    now = real_now()
    with psycopg.connect(service_env.database_url, autocommit=True) as conn:
        for name in names:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        out: list[tuple[str, County]] = []
        for name, backend in zip(names, (POSTGRES, TIMESCALE), strict=True):
            url = _db_url(service_env.database_url, name)
            asyncio.run(migrated(url, backend))  # skips (with why) when timescaledb is missing
            out.append((url, asyncio.run(populate(url, now))))
        yield out
    finally:
        for name in names:
            drop_database(service_env.database_url, name)


def test_same_answers_on_both_backends(two_backends: list[tuple[str, County]]) -> None:
    import httpx

    now = two_backends[0][1].now
    span = {"to": now.isoformat(), "metric": "crack_width_mm"}
    paths: list[tuple[str, dict[str, Any]]] = [
        ("/api/v1/overview", {}), ("/api/v1/devices", {"limit": 200}), ("/api/v1/devices/brg-01", {}),
        ("/api/v1/devices", {"status": "late"}), ("/api/v1/latest", {"kind": "bridge"}),
        ("/api/v1/map", {"cell_deg": 0.05}), ("/api/v1/bridges", {}), ("/api/v1/chargers/stations", {}),
        ("/api/v1/chargers/nearest", {"lat": 30.8362, "lon": 106.9734, "radius_m": 3000}),
        ("/api/v1/alerts", {}), ("/api/v1/incidents", {}),
        *[("/api/v1/devices/brg-01/series", {**span, "from": (now - timedelta(hours=h)).isoformat(),
                                             "bucket": b, "agg": agg})
          for h, b in ((1, "60"), (3, "PT10M"), (3, "PT1H")) for agg in ("avg", "sum", "count", "last")],
    ]
    answers: list[list[Any]] = []
    for url, county in two_backends:
        port = _free_port()
        settings = ApiSettings(database_url=url, api_port=port, api_live=False, api_overview_cache_s=0)
        with ServerThread(create_app(settings), port), httpx.Client(
                base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": county.tokens["viewer"]}) as c:
            answers.append([_normal(c.get(p, params=q).json()) for p, q in paths])
    for (path, params), pg, ts in zip(paths, answers[0], answers[1], strict=True):
        assert pg == ts, f"{path} {params}"
