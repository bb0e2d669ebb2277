"""The alert engine and the API (with the dashboard) as components of ``citysense up``.

The engine reads the readings topic of whichever bus ``up`` runs (in-memory or Kafka); on a
database with no rules yet, the default rule pack (``alerts/rules/default.yaml``) is applied.
The API runs under uvicorn in the same process; with the in-memory bus its live streams read
that bus (``MemoryLiveHub``). Each session gets a fresh operator key (the previous session's
is revoked), printed once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import uvicorn
from psycopg_pool import AsyncConnectionPool

from alerts.engine import AlertEngine
from alerts.settings import AlertSettings
from api.app import create_app
from api.live import LiveHub
from api.settings import ApiSettings
from brokers.base import Bus
from brokers.memory import MemoryBus, MemoryConsumer
from citysense.launch.components import StageComponent
from storage import alert_rules_store, apikeys
from storage.api_city import open_alerts_by_grade
from storage.db import open_pool

SESSION_KEY_NAME = "citysense-up-session"


async def ensure_rules(pool: AsyncConnectionPool) -> int:
    """Apply the default rule pack when the database holds no rules; returns how many exist."""
    from alerts.cli import DEFAULT_RULES
    from alerts.rule_file import load
    from alerts.rules_db import apply_rules

    async with pool.connection() as conn:
        existing = await alert_rules_store.list_rules(conn)
        if existing:
            return len(existing)
        rule_file = load(DEFAULT_RULES)
        await apply_rules(conn, rule_file, source=DEFAULT_RULES.name, actor="citysense-up")
        return len(rule_file.rules)


async def session_key(pool: AsyncConnectionPool) -> str:
    """Revoke the previous session's operator key and create this one's."""
    async with pool.connection() as conn:
        await apikeys.revoke_key(conn, SESSION_KEY_NAME)
        _, token = await apikeys.create_key(conn, SESSION_KEY_NAME, "operator")
        return token


async def open_alerts(pool: AsyncConnectionPool) -> int:
    async with pool.connection() as conn:
        return sum((await open_alerts_by_grade(conn)).values())


class AlertsComponent(StageComponent):
    def __init__(self, bus: Bus, db_url: str, topics: dict[str, Any]) -> None:
        self.settings = AlertSettings(database_url=db_url, **topics)
        self.db_url = db_url
        self._bus = bus
        self.pool: AsyncConnectionPool | None = None
        super().__init__("alerts", _NotBuilt())

    async def start(self) -> None:
        self.pool = await open_pool(self.db_url, max_size=3)
        await ensure_rules(self.pool)
        self.stage = AlertEngine(self._bus, self.pool, self.settings,
                                 group_wait_s=self.settings.alerts_group_wait_s)
        await super().start()

    async def stop(self) -> None:
        await super().stop()
        if self.pool is not None:
            pool, self.pool = self.pool, None
            await pool.close()


class _NotBuilt:
    def request_stop(self) -> None:
        return None

    async def run(self) -> None:
        raise RuntimeError("the alert engine is built in start()")


class MemoryLiveHub(LiveHub):
    """The API's live streams on the in-memory bus (its own group, committing as it reads,
    so the bus can drop what every group has read)."""

    def __init__(self, bus: MemoryBus, *args: Any, **kwargs: Any) -> None:
        super().__init__("in-memory", *args, **kwargs)
        self._bus = bus

    async def start(self) -> None:
        consumer = _CommittingConsumer(self._bus, [self._alerts_topic, self._readings_topic])
        await consumer.start()
        self._consumer = consumer  # same getmany() as aiokafka's
        self._task = asyncio.create_task(self._run(), name="api-live")

    async def kafka_reachable(self) -> bool:
        return self._consumer is not None


class _CommittingConsumer(MemoryConsumer):
    def __init__(self, bus: MemoryBus, topics: list[str]) -> None:
        super().__init__(bus, topics, "citysense-up-api-live", None, None)

    async def getmany(self, timeout_ms: int, max_records: int) -> Any:
        out = await super().getmany(timeout_ms, max_records)
        if out:
            await self.commit({tp: msgs[-1].offset + 1 for tp, msgs in out.items()})
        return out


class _QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling: ``up`` owns Ctrl-C and stops the API in turn."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ApiComponent:
    name = "api"

    def __init__(self, bus: Bus, db_url: str, port: int, kafka_bootstrap: str | None,
                 topics: dict[str, Any]) -> None:
        self.settings = ApiSettings(database_url=db_url, api_host="127.0.0.1", api_port=port,
                                    kafka_bootstrap=kafka_bootstrap, **topics)
        self._bus = bus
        self._server: _QuietServer | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.api_port}/"

    async def start(self) -> None:
        app = create_app(self.settings)
        if isinstance(self._bus, MemoryBus):
            hub_bus = self._bus
            original = app.router.lifespan_context

            @contextlib.asynccontextmanager
            async def lifespan(a: Any) -> Any:
                async with original(a):
                    s = self.settings
                    hub = MemoryLiveHub(hub_bus, s.topic_alerts, s.topic_readings, s.api_sse_buffer,
                                        _no_district, a.state.metrics.sse_dropped.inc)
                    await hub.start()
                    a.state.hub = hub
                    try:
                        yield
                    finally:
                        a.state.hub = None
                        await hub.stop()

            app.router.lifespan_context = lifespan
        config = uvicorn.Config(app, host="127.0.0.1", port=self.settings.api_port, log_level="warning",
                                access_log=False, timeout_graceful_shutdown=5, lifespan="on")
        self._server = _QuietServer(config)
        self._task = asyncio.create_task(self._server.serve(), name="api")
        while not self._server.started:
            if self._task.done():
                await self._task
                raise RuntimeError(f"the API did not start on port {self.settings.api_port}")
            await asyncio.sleep(0.05)

    def failed(self) -> BaseException | None:
        t = self._task
        if t is None or not t.done() or t.cancelled():
            return None
        return t.exception() or RuntimeError("the API server stopped")

    async def stop(self) -> None:
        server, task = self._server, self._task
        self._server = self._task = None
        if server is None or task is None:
            return
        server.should_exit = True
        await asyncio.gather(task, return_exceptions=True)


async def _no_district(device_id: str) -> str | None:
    return None
