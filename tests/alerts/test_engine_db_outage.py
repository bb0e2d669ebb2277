"""The engine's database connections killed again and again mid-stream: checkpoints fail
(retriable), offsets stay uncommitted, and in the end every transition is recorded once."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

from alerts.engine import AlertEngine
from brokers.kafka import KafkaBus
from citysense.records import encode
from citysense.settings import CommonSettings
from storage.db import open_pool
from tests.alerts.harness import alert_settings, scalar, setup, transitions
from tests.alerts.test_engine_crash import count, expected, rules, stream

pytestmark = [pytest.mark.services, pytest.mark.slow]


async def kill_connections(database: str) -> int:
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        cur = await conn.execute(
            """SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
               WHERE datname = current_database() AND pid <> pg_backend_pid()""")
        row = await cur.fetchone()
        return int(row[0]) if row else 0


async def test_database_connections_lost_mid_stream_lose_and_repeat_nothing(
        pipeline_settings: CommonSettings, kafka_bus: KafkaBus, database: str) -> None:
    s = alert_settings(pipeline_settings, database, alerts_max_records=20)
    batches = stream()
    yaml_rules = rules("http://127.0.0.1:9/unused")
    want = expected(batches, yaml_rules)
    await setup(kafka_bus, s, yaml_rules)
    producer = kafka_bus.producer()
    await producer.start()
    await producer.send_batch(s.topic_readings, [(b.device_id.encode(), encode(b)) for b in batches])
    await producer.stop()
    pool = await open_pool(database, max_size=3)
    engine = AlertEngine(kafka_bus, pool, s, group_wait_s=0)
    engine.stage._retry_backoff_s = 0.05  # retry fast in the test
    task = asyncio.create_task(engine.run())
    killed = 0
    try:
        deadline = time.monotonic() + 90
        while await count(database) < len(want) // 2:
            assert time.monotonic() < deadline and not task.done(), "engine stalled"
            await asyncio.sleep(0.05)
        for _ in range(5):
            killed += await kill_connections(database)
            await asyncio.sleep(0.3)
        while await count(database) < len(want):
            assert time.monotonic() < deadline and not task.done(), "engine stalled after the outage"
            await asyncio.sleep(0.05)
        while await scalar(database, "SELECT count(*) FROM alert_transitions WHERE published_at IS NULL"):
            assert time.monotonic() < deadline, "transitions left unpublished"
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
    finally:
        engine.request_stop()
        await asyncio.wait_for(task, 30)
        await pool.close()
    assert killed > 0
    got = [(d, a, g, t) for _, d, a, g, _, t in await transitions(database)]
    assert len(got) == len(want)
    for device in {w[0] for w in want}:
        assert [x for x in got if x[0] == device] == [x for x in want if x[0] == device]
