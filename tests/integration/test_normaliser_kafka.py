"""Acceptance of the normaliser on real Kafka: exact counts, rebalances, poison messages."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

import psycopg
import pytest

from brokers.base import KeyValue, TopicSpec
from brokers.kafka import KafkaBus
from citysense.settings import CommonSettings
from ingest.codecs.cat1_json import Cat1JsonCodec
from ingest.directory import StaticDirectory
from ingest.normaliser import Normaliser
from storage.db import open_pool
from storage.readings_sink import ReadingsSink
from storage.writer import Writer
from tests.integration.test_normaliser_faults import Stream, fault_stream, flatten, reasons

pytestmark = [pytest.mark.services, pytest.mark.slow]

WAIT_S = 90.0


async def setup(bus: KafkaBus, s: CommonSettings) -> None:
    await bus.create_topics([TopicSpec(s.topic_raw, s.raw_partitions),
                             TopicSpec(s.topic_readings, s.readings_partitions),
                             TopicSpec(s.topic_dlq, s.dlq_partitions)])


async def produce(bus: KafkaBus, topic: str, records: list[KeyValue]) -> None:
    producer = bus.producer()
    await producer.start()
    try:
        for i in range(0, len(records), 2000):
            await producer.send_batch(topic, records[i : i + 2000])
    finally:
        await producer.stop()


async def read_topic(bus: KafkaBus, topic: str, expected: int, settle_s: float = 1.5) -> list[bytes]:
    """Every value of a topic: poll until ``expected`` arrived (bounded), then a little longer for extras."""
    consumer = bus.consumer([topic], f"reader-{topic}-{time.monotonic_ns()}")
    values: list[bytes] = []
    await consumer.start()
    try:
        deadline = time.monotonic() + WAIT_S
        quiet_until: float | None = None
        while time.monotonic() < deadline:
            batches = await consumer.getmany(200, 5000)
            for msgs in batches.values():
                values.extend(m.value for m in msgs)
            if len(values) >= expected:
                quiet_until = quiet_until or time.monotonic() + settle_s
                if time.monotonic() >= quiet_until:
                    break
    finally:
        await consumer.stop()
    return values


async def wait_for(predicate: Callable[[], bool], within: float = WAIT_S) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


def normaliser(bus: KafkaBus, s: CommonSettings, stream: Stream, group: str = "n") -> Normaliser:
    return Normaliser(bus, raw_topic=s.topic_raw, readings_topic=s.topic_readings,
                      dlq_topic=s.topic_dlq, group=f"{s.topic_raw}-{group}", max_records=500,
                      directory=StaticDirectory(stream.devices))


async def check_outputs(bus: KafkaBus, s: CommonSettings, stream: Stream) -> None:
    readings = await read_topic(bus, s.topic_readings, stream.good_uplinks)
    got = flatten(readings)
    assert len(readings) == stream.good_uplinks
    assert got == stream.readings, (got - stream.readings, stream.readings - got)
    dead = await read_topic(bus, s.topic_dlq, sum(stream.dead.values()))
    assert reasons(dead) == stream.dead


async def test_every_fault_kind_exactly_once_on_kafka(
    kafka_bus: KafkaBus, pipeline_settings: CommonSettings
) -> None:
    s, stream = pipeline_settings, fault_stream(air_devices=40, env_devices=20, rounds=20)
    await setup(kafka_bus, s)
    await produce(kafka_bus, s.topic_raw, stream.records)
    norm = normaliser(kafka_bus, s, stream)
    task = asyncio.create_task(norm.run())
    try:
        await wait_for(lambda: norm.stage.records_committed >= len(stream.records) or task.done())
    finally:
        norm.request_stop()
        await task
    assert norm.stage.records_committed == len(stream.records)
    assert norm.readings_out == stream.good_uplinks
    await check_outputs(kafka_bus, s, stream)


async def test_two_instances_with_rebalances_mid_stream_exact_counts(
    kafka_bus: KafkaBus, pipeline_settings: CommonSettings
) -> None:
    """A consumes a live stream; B joins (rebalance); A stops (rebalance); B finishes."""
    s = pipeline_settings
    stream = fault_stream(air_devices=100, env_devices=40, rounds=60)  # ~8,600 uplinks
    await setup(kafka_bus, s)
    a, b = normaliser(kafka_bus, s, stream), normaliser(kafka_bus, s, stream)
    total = len(stream.records)
    chunks = [stream.records[i : i + 200] for i in range(0, total, 200)]

    async def trickle() -> None:  # ~10 s of live traffic, so the rebalances happen mid-stream
        for chunk in chunks:
            await produce(kafka_bus, s.topic_raw, chunk)
            await asyncio.sleep(0.15)

    feeder = asyncio.create_task(trickle())
    task_a = asyncio.create_task(a.run())
    task_b: asyncio.Task[None] | None = None
    try:
        await wait_for(lambda: a.stage.records_committed >= total // 5)
        task_b = asyncio.create_task(b.run())
        await wait_for(lambda: b.stage.records_committed > 0)
        a_before_stop = a.stage.records_committed
        a.request_stop()
        await task_a
        assert a.stage.records_committed < total and a_before_stop > 0
        await feeder
        await wait_for(lambda: a.stage.records_committed + b.stage.records_committed >= total)
        await asyncio.sleep(1.0)  # anything processed twice would show up here
    finally:
        feeder.cancel()
        a.request_stop()
        b.request_stop()
        await asyncio.gather(task_a, *([task_b] if task_b else []), return_exceptions=True)
    assert a.stage.records_committed + b.stage.records_committed == total
    assert a.readings_out + b.readings_out == stream.good_uplinks
    assert b.stage.records_committed > 0 and a.stage.records_committed > 0
    await check_outputs(kafka_bus, s, stream)


async def test_a_poison_message_never_blocks_the_partition_behind_it(
    kafka_bus: KafkaBus, pipeline_settings: CommonSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = pipeline_settings.model_copy(update={"raw_partitions": 1})
    real_decode = Cat1JsonCodec.decode

    def explosive(self: Cat1JsonCodec, device_id: str, payload: bytes, received_ns: int) -> object:
        if b"POISON" in payload:
            raise RuntimeError("codec bug triggered by this payload")
        return real_decode(self, device_id, payload, received_ns)

    monkeypatch.setattr(Cat1JsonCodec, "decode", explosive)
    good = fault_stream(air_devices=5, env_devices=4, rounds=10)
    stream = Stream(devices=good.devices)
    stream.raw("air", "air-0000", b'{"POISON": 1}', time.time_ns())
    stream.dead["internal_error"] += 1
    stream.records.append((b"x", b"\xc1\xc1"))
    stream.dead["bad_envelope"] += 1
    for key, value in good.records[:60]:  # good traffic behind the poison, same partition
        stream.records.append((key, value))
    await setup(kafka_bus, s)
    await produce(kafka_bus, s.topic_raw, stream.records)
    norm = normaliser(kafka_bus, s, stream)
    task = asyncio.create_task(norm.run())
    try:
        await wait_for(lambda: norm.stage.records_committed >= len(stream.records) or task.done())
    finally:
        norm.request_stop()
        await task
    readings = await read_topic(kafka_bus, s.topic_readings, norm.readings_out)
    assert norm.readings_out >= 50 and len(readings) == norm.readings_out
    assert norm.counters.internal_errors == 1
    dead = await read_topic(kafka_bus, s.topic_dlq, 2)
    assert reasons(dead) == Counter({"internal_error": 1, "bad_envelope": 1})


async def test_fault_stream_reaches_the_database_exactly_once(
    kafka_bus: KafkaBus, pipeline_settings: CommonSettings, database: str
) -> None:
    s, stream = pipeline_settings, fault_stream(air_devices=20, env_devices=10, rounds=10)
    await setup(kafka_bus, s)
    await produce(kafka_bus, s.topic_raw, stream.records)
    norm = normaliser(kafka_bus, s, stream)
    pool = await open_pool(database)
    writer = Writer(kafka_bus, ReadingsSink(pool), readings_topic=s.topic_readings,
                    dlq_topic=s.topic_dlq, group=f"{s.topic_raw}-writer")
    tasks = [asyncio.create_task(x.run()) for x in (norm, writer)]
    try:
        await wait_for(lambda: writer.stage.records_committed >= stream.good_uplinks
                       or any(t.done() for t in tasks))
    finally:
        norm.request_stop()
        writer.request_stop()
        await asyncio.gather(*tasks)
        await pool.close()
    async with await psycopg.AsyncConnection.connect(database) as conn:
        cur = await conn.execute(
            "SELECT device_id, metric, (extract(epoch FROM time) * 1e6)::bigint, value, quality"
            " FROM readings")
        rows = Counter((d, m, t * 1000, v, q) for d, m, t, v, q in await cur.fetchall())
    assert rows == stream.readings


