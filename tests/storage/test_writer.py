"""The writer stage over the in-memory bus and the real database: retries lose nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta

import pytest

from brokers.base import TopicSpec
from brokers.memory import MemoryBus
from citysense.records import Reading, RecordBatch, Status, decode_dead_letter, encode
from storage.base import WriteResult
from storage.exceptions import StorageUnavailableError
from storage.writer import Writer
from tests.storage.conftest import Store
from tests.storage.factories import T0, ns, uplink

pytestmark = pytest.mark.services


class FlakySink:
    """Fails the first ``failures`` writes and ``flush_failures`` flushes as a lost connection
    would, then delegates."""

    def __init__(self, inner: Store, failures: int, flush_failures: int = 0) -> None:
        self._inner = inner.sink
        self.failures = failures
        self.flush_failures = flush_failures

    async def write(self, batches: Sequence[RecordBatch]) -> WriteResult:
        if self.failures:
            self.failures -= 1
            raise StorageUnavailableError("connection lost (simulated)")
        return await self._inner.write(batches)

    async def flush(self) -> None:
        if self.flush_failures:
            self.flush_failures -= 1
            raise StorageUnavailableError("connection lost in a flush (simulated)")
        await self._inner.flush()


async def test_writer_retries_transient_failures_and_commits_after_the_database(pg_store: Store) -> None:
    bus = MemoryBus()
    await bus.create_topics([TopicSpec("readings", 2), TopicSpec("dlq", 1)])
    producer = bus.producer()
    await producer.start()
    batches = [uplink(f"air-{d}", T0 + i * timedelta(minutes=1), {"pm25": float(i)})
               for d in range(4) for i in range(50)]
    await producer.send_batch("readings", [(b.device_id.encode(), encode(b)) for b in batches])
    await producer.send_batch("readings", [(b"junk", b"\x00not msgpack")])
    sink = FlakySink(pg_store, failures=2, flush_failures=2)
    writer = Writer(bus, sink, readings_topic="readings", dlq_topic="dlq", group="w", max_records=64,
                    checkpoint_interval_s=0.05)
    writer.stage._retry_backoff_s = 0.0  # deterministic: no sleeping between retries
    task = asyncio.create_task(writer.run())
    async with asyncio.timeout(60):
        # Polls a counter the stage owns; there is no event to wait on.
        while writer.stage.records_committed < len(batches) + 1:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    writer.request_stop()
    await task

    assert sink.failures == sink.flush_failures == 0
    assert writer.rows_inserted == len(batches)
    async with pg_store.pool.connection() as conn:
        cur = await conn.execute("SELECT count(*), count(DISTINCT device_id) FROM readings")
        assert await cur.fetchone() == (200, 4)
        # the checkpoint flushed every device's newest value before the offsets were committed
        cur = await conn.execute("SELECT device_id, value FROM latest_readings ORDER BY device_id")
        assert await cur.fetchall() == [(f"air-{d}", 49.0) for d in range(4)]
    assert sum(bus.committed("w").values()) == len(batches) + 1
    dlq_end = bus.end_offsets("dlq")
    assert sum(dlq_end.values()) == 1
    consumer = bus.consumer(["dlq"], "inspect")
    await consumer.start()
    got = await consumer.getmany(100, 10)
    await consumer.stop()
    letter = decode_dead_letter(next(iter(got.values()))[0].value)
    assert (letter.reason_code, letter.stage) == ("bad_record", "write")


async def test_records_the_database_refuses_are_dead_lettered_alone_and_never_stall(store: Store) -> None:
    """A NUL in a text field or a seq beyond int8 once crashed the writer on every restart."""
    bus = MemoryBus()
    await bus.create_topics([TopicSpec("readings", 1), TopicSpec("dlq", 1)])
    producer = bus.producer()
    await producer.start()
    good = [uplink("air-1", T0 + i * timedelta(minutes=1), {"pm25": float(i)}) for i in range(40)]
    nul = RecordBatch("ev-1", 0, statuses=(Status("ev-1", 1, ns(T0), "Charging", "NoError", "S\x001"),))
    huge_seq = RecordBatch("air-2", 0, (Reading("air-2", "pm25", ns(T0), 1.0, ns(T0), 2**63),))
    stream = [*good[:13], nul, *good[13:27], huge_seq, *good[27:]]
    await producer.send_batch("readings", [(b.device_id.encode(), encode(b)) for b in stream])
    writer = Writer(bus, store.sink, readings_topic="readings", dlq_topic="dlq", group="w", max_records=100)
    task = asyncio.create_task(writer.run())
    async with asyncio.timeout(60):
        while writer.stage.records_committed < len(stream):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    writer.request_stop()
    await task

    assert writer.rows_inserted == len(good)  # every good neighbour stored
    consumer = bus.consumer(["dlq"], "inspect")
    await consumer.start()
    got = await consumer.getmany(100, 10)
    await consumer.stop()
    letters = [decode_dead_letter(m.value) for msgs in got.values() for m in msgs]
    assert sorted((d.reason_code, d.device_id, d.source_offset) for d in letters) == [
        ("refused_by_database", "air-2", 28), ("refused_by_database", "ev-1", 13)]


def _incompressible_id(n: int) -> str:
    """A device id PostgreSQL cannot compress below the btree entry limit (~2.7 kB)."""
    import random
    import string

    rng = random.Random(n)
    return "air-" + "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(n))


async def test_a_device_id_too_long_for_the_index_is_dead_lettered_not_retried_forever(
    pg_store: Store,
) -> None:
    """Issue 12, finding 1: PostgreSQL refuses a ~3 kB key (SQLSTATE 54000, program limit
    exceeded). It is not transient: the writer must bisect it out, store its neighbours once and
    commit, instead of retrying the whole batch forever."""
    bus = MemoryBus()
    await bus.create_topics([TopicSpec("readings", 2), TopicSpec("dlq", 1)])
    producer = bus.producer()
    await producer.start()
    long_id = _incompressible_id(3000)
    good = [uplink(f"air-{d}", T0 + i * timedelta(minutes=1), {"pm25": float(i)})
            for d in range(3) for i in range(20)]
    bad = uplink(long_id, T0, {"pm25": 1.0})
    stream = [*good[:31], bad, *good[31:]]
    await producer.send_batch("readings", [(b.device_id.encode(), encode(b)) for b in stream])
    writer = Writer(bus, pg_store.sink, readings_topic="readings", dlq_topic="dlq", group="w",
                    max_records=500, checkpoint_interval_s=0.05)
    writer.stage._retry_backoff_s = 0.0
    task = asyncio.create_task(writer.run())
    async with asyncio.timeout(30):
        while writer.stage.records_committed < len(stream) and not task.done():  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    writer.request_stop()
    await task

    assert writer.stage.records_committed == len(stream)
    assert sum(bus.committed("w").values()) == len(stream)
    async with pg_store.pool.connection() as conn:
        cur = await conn.execute("SELECT count(*), count(DISTINCT (device_id, metric, time)) FROM readings")
        assert await cur.fetchone() == (len(good), len(good))
    consumer = bus.consumer(["dlq"], "inspect")
    await consumer.start()
    got = await consumer.getmany(100, 10)
    await consumer.stop()
    letters = [decode_dead_letter(m.value) for msgs in got.values() for m in msgs]
    assert [(d.reason_code, d.stage, d.device_id) for d in letters] == [
        ("refused_by_database", "write", long_id)]
    assert "54000" in letters[0].message or "index row" in letters[0].message
