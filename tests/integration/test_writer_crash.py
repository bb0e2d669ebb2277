"""A writer killed with SIGKILL mid-stream and restarted stores every reading exactly once,
and leaves every device's latest state right."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import psycopg
import pytest

from brokers.kafka import KafkaBus
from citysense.records import Reading, RecordBatch, encode
from citysense.settings import CommonSettings
from tests.conftest import ServiceEnv
from tests.integration.pipeline import count_rows, create_topics, wait_until

pytestmark = [pytest.mark.services, pytest.mark.slow]

UPLINKS = 30_000
METRICS = ("pm25", "pm10")


# Recent times (the last few days) stay inside any retention window.
BASE_NS = (time.time_ns() // 60_000_000_000 - UPLINKS // 100 - 60) * 60_000_000_000


def _batch(i: int) -> RecordBatch:
    device = f"air-{i % 100:04d}"
    t = BASE_NS + (i // 100) * 60_000_000_000
    readings = tuple(Reading(device, m, t, float(i % 500), t + 1_000_000, i // 100) for m in METRICS)
    return RecordBatch(device_id=device, received_ns=t, readings=readings)


def _start_writer(s: CommonSettings, database_url: str, group: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "CITYSENSE_DATABASE_URL": database_url,
        "CITYSENSE_KAFKA_BOOTSTRAP": s.kafka_bootstrap or "",
        "CITYSENSE_TOPIC_RAW": s.topic_raw,
        "CITYSENSE_TOPIC_READINGS": s.topic_readings,
        "CITYSENSE_TOPIC_DLQ": s.topic_dlq,
        "CITYSENSE_TOPIC_ALERTS": s.topic_alerts,
        "CITYSENSE_WRITER_GROUP": group,
        # Small batches: many transactions, so the kill lands between two of them.
        "CITYSENSE_WRITER_MAX_RECORDS": "200",
    }
    return subprocess.Popen([sys.executable, "-m", "citysense", "write"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def test_sigkill_mid_stream_then_restart_stores_every_reading_once(
    service_env: ServiceEnv, pipeline_settings: CommonSettings, kafka_bus: KafkaBus,
    database: str, unique: str,
) -> None:
    s = pipeline_settings
    await create_topics(kafka_bus, s)
    producer = kafka_bus.producer()
    await producer.start()
    try:
        records = [(b.device_id.encode(), encode(b)) for b in map(_batch, range(UPLINKS))]
        for start in range(0, UPLINKS, 5000):
            await producer.send_batch(s.topic_readings, records[start : start + 5000])
    finally:
        await producer.stop()
    expected = UPLINKS * len(METRICS)
    group = f"test-writer-{unique}"

    first = _start_writer(s, database, group)
    try:
        async def some_rows() -> bool:
            return await count_rows(database) > 0

        await wait_until(some_rows, 60, "the first writer to store something")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        at_kill = await count_rows(database)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == -signal.SIGKILL
    assert 0 < at_kill < expected, f"kill landed outside the stream ({at_kill} of {expected})"

    second = _start_writer(s, database, group)
    try:
        async def all_rows() -> bool:
            assert second.poll() is None, second.stderr.read().decode() if second.stderr else ""
            return await count_rows(database) >= expected

        try:
            await wait_until(all_rows, 180, f"{expected} rows after the restart")
        except AssertionError:
            second.send_signal(signal.SIGTERM)
            _, err = second.communicate(timeout=30)
            rows = await count_rows(database)
            raise AssertionError(f"{rows} rows; writer said: {err.decode()[-3000:]}") from None
        await asyncio.sleep(1)
        assert await count_rows(database) == expected
    finally:
        second.send_signal(signal.SIGTERM)  # graceful: drains the batch in flight
        assert second.wait(timeout=30) == 0

    # The restarted writer committed every partition up to its end (offsets are
    # contiguous: a plain idempotent producer wrote exactly UPLINKS messages).
    committed = await _committed(kafka_bus, s.topic_readings, group)
    assert sum(committed.values()) == UPLINKS
    # Device state lost with the killed writer's pending checkpoint was derived again from
    # the re-delivered batches: every device's latest values are its newest readings.
    async with await psycopg.AsyncConnection.connect(database) as conn:
        cur = await conn.execute("SELECT device_id, metric, time, value FROM latest_readings ORDER BY 1, 2")
        latest = await cur.fetchall()
        cur = await conn.execute("""SELECT DISTINCT ON (device_id, metric) device_id, metric, time, value
                                    FROM readings ORDER BY device_id, metric, time DESC""")
        assert latest == await cur.fetchall()
    assert len(latest) == 100 * len(METRICS)


async def _committed(bus: KafkaBus, topic: str, group: str) -> dict[int, int]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bus.config.bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}
