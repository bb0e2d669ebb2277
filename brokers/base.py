"""The bus contract every stage talks to.

A *producer* sends a batch of ``(key, value)`` pairs to a topic and returns
only once every record of the batch is durable (for Kafka: acknowledged by
all in-sync replicas). A *consumer* in a group hands out batches per
partition and commits the offsets it is given. ``KafkaBus`` and ``MemoryBus``
both pass ``tests/contracts``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol


class TopicPartition(NamedTuple):
    topic: str
    partition: int


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp_ms: int

    @property
    def tp(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int


KeyValue = tuple[bytes | None, bytes]
PartitionsCallback = Callable[[frozenset[TopicPartition]], Awaitable[None]]


class Producer(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send_batch(self, topic: str, records: Sequence[KeyValue]) -> None:
        """Send the records in order per key; return when all are durable."""
        ...


class Consumer(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def getmany(
        self, timeout_ms: int, max_records: int
    ) -> Mapping[TopicPartition, Sequence[Message]]:
        """Wait up to ``timeout_ms`` for records of the assigned partitions."""
        ...

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit, per partition, the offset of the *next* record to read."""
        ...

    def assignment(self) -> frozenset[TopicPartition]: ...

    def lags(self) -> Mapping[TopicPartition, int]:
        """Records behind the high watermark, per assigned partition, as of the last fetch."""
        ...


class Bus(Protocol):
    """A factory of producers and consumers on one cluster."""

    def producer(self) -> Producer: ...

    def consumer(
        self,
        topics: Sequence[str],
        group: str,
        *,
        on_revoked: PartitionsCallback | None = None,
        on_assigned: PartitionsCallback | None = None,
    ) -> Consumer:
        """A consumer in ``group``.

        ``on_revoked`` is awaited before partitions are taken away, so the
        owner can finish and commit in-flight work (commit on revoke).
        """
        ...

    async def create_topics(self, topics: Sequence[TopicSpec]) -> None:
        """Create topics that do not exist yet; existing ones are left alone."""
        ...

    async def close(self) -> None: ...
