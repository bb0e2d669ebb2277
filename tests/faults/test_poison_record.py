"""Issue 12, finding 1 on real Kafka and PostgreSQL: one record PostgreSQL will never accept.

A ~3 kB device id makes the readings' primary-key index refuse its row
(SQLSTATE 54000). It reached the writer through the readings topic beside good
uplinks on every partition; the writer used to count the error as transient and
retry the whole batch forever, across restarts. Now: every good uplink stored
exactly once, the bad one dead-lettered with its reason, every offset committed.
"""

from __future__ import annotations

import asyncio
import random
import string
import time

import psycopg
import pytest

from brokers.base import TopicSpec
from brokers.kafka import KafkaBus
from citysense.records import Reading, RecordBatch, encode
from citysense.settings import CommonSettings
from ingest.dlq import scan
from storage.db import open_pool
from storage.readings_sink import ReadingsSink
from storage.writer import Writer
from tests.integration.pipeline import wait_until

pytestmark = [pytest.mark.services]

MINUTE_NS = 60 * 10**9


def _uplink(device: str, t_ns: int, value: float) -> RecordBatch:
    return RecordBatch(device, t_ns, (Reading(device, "pm25", t_ns, value, t_ns, 1),
                                      Reading(device, "pm10", t_ns, value * 2, t_ns, 1)))


async def test_an_index_breaking_device_id_never_stalls_the_writer(
    kafka_bus: KafkaBus, pipeline_settings: CommonSettings, database: str, unique: str,
) -> None:
    s = pipeline_settings
    await kafka_bus.create_topics([TopicSpec(s.topic_readings, 4), TopicSpec(s.topic_dlq, 1)])
    rng = random.Random(12)
    long_id = "air-" + "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(3000))
    start = (time.time_ns() // MINUTE_NS - 120) * MINUTE_NS
    good = [_uplink(f"air-{d:03d}", start + i * MINUTE_NS, float(i)) for i in range(40) for d in range(25)]
    stream = [*good[:500], _uplink(long_id, start, 1.0), *good[500:]]
    producer = kafka_bus.producer()
    await producer.start()
    await producer.send_batch(s.topic_readings, [(b.device_id.encode(), encode(b)) for b in stream])
    await producer.stop()

    pool = await open_pool(database)
    writer = Writer(kafka_bus, ReadingsSink(pool), readings_topic=s.topic_readings, dlq_topic=s.topic_dlq,
                    group=f"test-{unique}-writer", max_records=5000, checkpoint_interval_s=0.2)
    task = asyncio.create_task(writer.run())
    try:
        async def all_committed() -> bool:
            assert not task.done(), "the writer stopped"
            return writer.stage.records_committed >= len(stream)

        await wait_until(all_committed, 60, "every readings record committed")
    finally:
        writer.request_stop()
        await task
        await pool.close()

    async with await psycopg.AsyncConnection.connect(database) as conn:
        cur = await conn.execute("SELECT count(*), count(DISTINCT (device_id, metric, time)),"
                                 " count(*) FILTER (WHERE length(device_id) > 64) FROM readings")
        stored = await cur.fetchone()
    letters = (await scan(kafka_bus, s.topic_dlq, idle_ms=1500)).letters
    print(f"\naccounting: offered {len(stream)} uplinks ({2 * len(good)} good readings + 1 poison uplink), "
          f"stored {stored}, dead-lettered {[(d.reason_code, len(d.device_id)) for d in letters]}, "
          f"committed {writer.stage.records_committed}")
    assert stored == (2 * len(good), 2 * len(good), 0)  # every good reading once, nothing else
    assert [(d.reason_code, d.stage, d.device_id) for d in letters] == [
        ("refused_by_database", "write", long_id)]
    assert "54000" in letters[0].message
    assert writer.stage.records_committed == len(stream)
