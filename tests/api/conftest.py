"""A populated database and a real API server (uvicorn in a thread) per test module."""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn
from psycopg import sql
from sse_starlette.sse import AppStatus

from api.app import create_app
from api.settings import ApiSettings
from brokers.base import TopicSpec
from brokers.kafka import KafkaBus, KafkaConfig
from tests.api.populate import County, populate
from tests.conftest import ServiceEnv, _db_url


@dataclass
class Api:
    url: str
    db_url: str
    county: County
    settings: ApiSettings
    app: Any

    def client(self, role: str | None = "viewer", token: str | None = None) -> httpx.Client:
        headers = {}
        key = token if token is not None else (self.county.tokens[role] if role else None)
        if key:
            headers["X-API-Key"] = key
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerThread:
    def __init__(self, app: Any, port: int) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                                    access_log=False, timeout_graceful_shutdown=3))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the API server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.handle_exit(signal.SIGTERM, None)  # as a real SIGTERM: sse-starlette hooks it
        self.thread.join(timeout=15)
        # sse-starlette keeps "the server is exiting" process-wide (one server per process in
        # production); the next test server in this process must start without it.
        AppStatus.should_exit = False


@pytest.fixture(scope="module")
def api(service_env: ServiceEnv) -> Iterator[Api]:
    unique = uuid.uuid4().hex[:10]
    name = f"cs_api_{unique}"
    with psycopg.connect(service_env.database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    db_url = _db_url(service_env.database_url, name)
    topics = {"topic_alerts": f"test.{unique}.alerts", "topic_readings": f"test.{unique}.readings"}
    bus = KafkaBus(KafkaConfig(bootstrap=service_env.kafka_bootstrap, client_id="citysense-test"))
    try:
        asyncio.run(bus.create_topics([TopicSpec(t, 1) for t in topics.values()]))
        county = asyncio.run(populate(db_url))
        port = _free_port()
        settings = ApiSettings(database_url=db_url, kafka_bootstrap=service_env.kafka_bootstrap,
                               api_port=port, api_rate_per_s=1000, api_rate_burst=5000,
                               api_overview_cache_s=0, api_map_cache_s=0, api_sse_ping_s=1,
                               api_key_cache_s=0, **topics)
        app = create_app(settings)
        with ServerThread(app, port):
            yield Api(f"http://127.0.0.1:{port}", db_url, county, settings, app)
    finally:
        drop_database(service_env.database_url, name)


def drop_database(url: str, name: str) -> None:
    """Drop ``name``; FORCE is refused while a server worker (autovacuum) is in it, a plain
    DROP while a client is: try both for a few seconds."""
    force = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    plain = sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name))
    with psycopg.connect(url, autocommit=True) as conn:
        for attempt in range(50):
            try:
                conn.execute(force if attempt % 2 == 0 else plain)
                return
            except (psycopg.errors.InsufficientPrivilege, psycopg.errors.ObjectInUse):
                if attempt == 49:
                    raise
                time.sleep(0.2)
