"""MemoryBus specifics beyond the shared bus contract."""

from __future__ import annotations

from brokers.base import TopicPartition, TopicSpec
from brokers.memory import MemoryBus, partition_for


async def test_a_backlogged_partition_does_not_starve_the_others() -> None:
    bus = MemoryBus()
    await bus.create_topics([TopicSpec("t", 2)])
    busy = next(k for k in (f"k{i}".encode() for i in range(100)) if partition_for(k, 2, 0) == 0)
    quiet = next(k for k in (f"k{i}".encode() for i in range(100)) if partition_for(k, 2, 0) == 1)
    producer = bus.producer()
    await producer.start()
    await producer.send_batch("t", [(busy, b"x")] * 1000 + [(quiet, b"y")])
    consumer = bus.consumer(["t"], "g")
    await consumer.start()
    seen: set[int] = set()
    for _ in range(2):  # two small polls reach both partitions, whatever the order
        got = await consumer.getmany(0, 10)
        seen |= {tp.partition for tp in got}
    assert seen == {0, 1}
    assert TopicPartition("t", 1) in consumer.assignment()
    await consumer.stop()
