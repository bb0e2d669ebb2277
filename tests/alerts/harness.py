"""An alert engine on the real Kafka and PostgreSQL, with an injected clock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from alerts.engine import AlertEngine
from alerts.rule_file import parse
from alerts.rules_db import apply_rules
from alerts.settings import AlertSettings
from brokers.base import TopicSpec
from brokers.kafka import KafkaBus
from citysense.records import RecordBatch, encode
from citysense.settings import CommonSettings
from storage.db import open_pool

NS = 1_000_000_000
MIN = 60 * NS
T0 = 1_900_000_000 * NS  # device time of the tests (2030)


@dataclass
class FakeClock:
    now_ns: int = T0

    def __call__(self) -> int:
        return self.now_ns


def alert_settings(s: CommonSettings, database_url: str, **extra: Any) -> AlertSettings:
    return AlertSettings(
        database_url=database_url, kafka_bootstrap=s.kafka_bootstrap, topic_readings=s.topic_readings,
        topic_alerts=s.topic_alerts, readings_partitions=s.readings_partitions,
        alerts_group=f"alerts-{s.topic_readings}", alerts_checkpoint_interval_s=0.0,
        alerts_rules_poll_s=0.5, **extra)


async def setup(bus: KafkaBus, s: AlertSettings, rules_yaml: str) -> None:
    await bus.create_topics([TopicSpec(s.topic_readings, s.readings_partitions),
                             TopicSpec(s.topic_alerts, 1)])
    assert s.database_url is not None
    async with await psycopg.AsyncConnection.connect(s.database_url.get_secret_value()) as conn:
        await apply_rules(conn, parse(rules_yaml), source="test.yaml", actor="test")


async def register(database_url: str, devices: Sequence[tuple[str, str, str | None, float]]) -> None:
    """(device_id, kind, site_id, report_interval_s) rows, with their sites."""
    async with await psycopg.AsyncConnection.connect(database_url) as conn, conn.cursor() as cur:
        for site in sorted({d[2] for d in devices if d[2]}):
            await cur.execute("INSERT INTO sites VALUES (%s, 'bridge', %s, 't', 'd') ON CONFLICT DO NOTHING",
                              (site, site))
        await cur.executemany(
            """INSERT INTO devices (device_id, kind, profile, network, site_id, township, district,
                   report_interval_s) VALUES (%s, %s, %s, 'nb-iot', %s, 't', 'd', %s)""",
            [(d, k, k, site, iv) for d, k, site, iv in devices])


class Harness:
    def __init__(self, bus: KafkaBus, settings: AlertSettings, clock: FakeClock | None = None,
                 group_wait_s: float = 0.0, group_interval_s: float = 0.0) -> None:
        self.bus = bus
        self.s = settings
        self.clock = clock or FakeClock()
        self.group_wait_s = group_wait_s
        self.group_interval_s = group_interval_s
        self.sent = 0
        self._base = 0

    async def __aenter__(self) -> Harness:
        assert self.s.database_url is not None
        self.url = self.s.database_url.get_secret_value()
        self.pool = await open_pool(self.url, max_size=3)
        self.engine = AlertEngine(self.bus, self.pool, self.s, clock=self.clock, tick_s=0.05,
                                  group_wait_s=self.group_wait_s, group_interval_s=self.group_interval_s)
        self.task = asyncio.create_task(self.engine.run())
        deadline = time.monotonic() + 30
        while not self.engine.stage.consumer.assignment():
            if self.task.done():
                await self.task
            assert time.monotonic() < deadline, "engine got no partitions"
            await asyncio.sleep(0.05)
        self.producer = self.bus.producer()
        await self.producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.stop()
        self.engine.request_stop()
        await asyncio.wait_for(self.task, 30)
        await self.pool.close()

    async def send(self, batches: Sequence[RecordBatch]) -> None:
        """Produce, then wait until the engine has committed past them."""
        records = [(b.device_id.encode(), encode(b)) for b in batches]
        await self.producer.send_batch(self.s.topic_readings, records)
        self.sent += len(batches)
        await self.settled()

    async def settled(self, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while self.engine.stage.records_committed < self.sent:
            if self.task.done():
                await self.task
            done = self.engine.stage.records_committed
            assert time.monotonic() < deadline, f"engine committed {done}/{self.sent}"
            await asyncio.sleep(0.02)

    async def advance(self, to_ns: int) -> None:
        """Move the injected clock and let the silence ticker act on it."""
        self.clock.now_ns = to_ns
        await self.engine.tick()


async def transitions(database_url: str) -> list[tuple[str, str, str, int, float | None, int]]:
    """(rule_id, device_id, action, grade, value, device_time ns) in recorded order."""
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(
            """SELECT a.rule_id, a.device_id, t.action, t.grade, t.value,
                      (extract(epoch FROM t.device_time) * 1e9)::bigint
               FROM alert_transitions t JOIN alerts a USING (alert_id) ORDER BY t.transition_id""")
        return [(r, d, act, g, v, int(tn)) for r, d, act, g, v, tn in await cur.fetchall()]


async def scalar(database_url: str, query: str, *params: object) -> Any:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(query, params)  # type: ignore[arg-type]
        row = await cur.fetchone()
        return row[0] if row else None
