"""up's retention for the in-memory bus drops only what every reading group has committed."""

from __future__ import annotations

from brokers.base import TopicPartition, TopicSpec
from brokers.memory import MemoryBus
from citysense.launch.up_bus import Trimmer


async def test_trim_drops_only_what_every_group_committed() -> None:
    bus = MemoryBus()
    await bus.create_topics([TopicSpec("t", 1), TopicSpec("dlq", 1)])
    producer = bus.producer()
    await producer.start()
    await producer.send_batch("t", [(b"k", b"%d" % i) for i in range(10)])
    await producer.send_batch("dlq", [(b"k", b"dead")])
    fast, slow = bus.consumer(["t"], "fast"), bus.consumer(["t"], "slow")
    await fast.start()
    await slow.start()
    tp = TopicPartition("t", 0)
    await fast.getmany(0, 10)
    await fast.commit({tp: 10})
    await slow.getmany(0, 4)
    await slow.commit({tp: 4})
    trimmer = Trimmer(bus)
    assert trimmer.trim_consumed() == 4  # the slow group's committed offset bounds it
    await slow.stop()  # a group between members still holds its committed offset
    assert trimmer.trim_consumed() == 0
    again = bus.consumer(["t"], "slow")
    await again.start()
    got = await again.getmany(0, 100)
    assert [m.value for m in got[tp]] == [b"%d" % i for i in range(4, 10)]
    assert bus.end_offsets("dlq") == {TopicPartition("dlq", 0): 1}
    assert trimmer.trim_consumed() == 0  # nobody reads dlq: kept whole; "slow" has not committed more
    await again.commit({tp: 10})
    assert trimmer.trim_consumed() == 6
    await fast.stop()
    await again.stop()
    await producer.stop()
