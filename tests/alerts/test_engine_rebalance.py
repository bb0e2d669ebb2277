"""Two engine instances with rebalances mid-stream record the same transitions as one:
the second joins (partitions move to it with their state), then the first leaves."""

from __future__ import annotations

import asyncio
import time

import pytest

from alerts.engine import AlertEngine
from brokers.kafka import KafkaBus
from citysense.records import encode
from citysense.settings import CommonSettings
from storage.db import open_pool
from tests.alerts.harness import alert_settings, setup, transitions
from tests.alerts.test_engine_crash import count, expected, rules, stream

pytestmark = [pytest.mark.services, pytest.mark.slow]


async def test_two_engines_with_rebalances_record_what_one_would(
        pipeline_settings: CommonSettings, kafka_bus: KafkaBus, database: str) -> None:
    s = alert_settings(pipeline_settings, database, alerts_max_records=20)
    batches = stream()
    yaml_rules = rules("http://127.0.0.1:9/unused")
    want = expected(batches, yaml_rules)
    await setup(kafka_bus, s, yaml_rules)
    producer = kafka_bus.producer()
    await producer.start()
    thirds = [batches[i * len(batches) // 3:(i + 1) * len(batches) // 3] for i in range(3)]

    async def send(part: int) -> None:
        await producer.send_batch(s.topic_readings, [(b.device_id.encode(), encode(b)) for b in thirds[part]])
    pool = await open_pool(database, max_size=4)
    first = AlertEngine(kafka_bus, pool, s, group_wait_s=0)
    second = AlertEngine(kafka_bus, pool, s, group_wait_s=0)
    tasks = [asyncio.create_task(first.run())]

    async def until(n: int, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while await count(database) < n:
            for t in tasks:
                if t.done():
                    await t
            assert time.monotonic() < deadline, f"fewer than {n} transitions"
            await asyncio.sleep(0.02)

    async def assigned(engine: AlertEngine) -> None:
        deadline = time.monotonic() + 60
        while not engine.stage.consumer.assignment():
            assert time.monotonic() < deadline, "no partitions"
            await asyncio.sleep(0.05)

    try:
        await send(0)
        await until(len(want) // 5)
        tasks.append(asyncio.create_task(second.run()))  # joins: a rebalance mid-stream
        await send(1)
        await assigned(second)
        await asyncio.sleep(0.5)
        first.request_stop()  # leaves: its partitions move to the second
        await asyncio.wait_for(tasks[0], 30)
        await send(2)
        await until(len(want))
        await asyncio.sleep(1.5)
    finally:
        await producer.stop()
        for engine in (first, second):
            engine.request_stop()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
        await pool.close()
    assert first.stage.records_committed > 0 and second.stage.records_committed > 0
    got = [(d, a, g, t) for _, d, a, g, _, t in await transitions(database)]
    extra = [x for x in got if got.count(x) > want.count(x)]
    assert len(got) == len(want), f"extra {extra[:10]}"
    for device in {w[0] for w in want}:
        assert [x for x in got if x[0] == device] == [x for x in want if x[0] == device]
