"""The bus on Apache Kafka, through aiokafka.

Producers use ``acks=all`` with idempotence, so a retried send never
duplicates a record and ``send_batch`` returns only once the batch is
replicated. Consumers never auto-commit: the stage that owns them commits
after its own side effects are durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka import TopicPartition as KafkaTP
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CommitFailedError as KafkaCommitFailed,
)
from aiokafka.errors import (
    IllegalGenerationError,
    KafkaConnectionError,
    KafkaError,
    OutOfOrderSequenceNumber,
    RebalanceInProgressError,
    TopicAlreadyExistsError,
    UnknownMemberIdError,
    UnknownProducerId,
)
from aiokafka.partitioner import murmur2

from brokers.base import KeyValue, Message, PartitionsCallback, TopicPartition, TopicSpec
from brokers.exceptions import BrokerError, BrokerUnavailableError, CommitFailedError, NotStartedError
from citysense.settings import CommonSettings


@dataclass(frozen=True, slots=True, kw_only=True)
class KafkaConfig:
    bootstrap: str
    client_id: str = "citysense"
    linger_ms: int = 5
    max_batch_bytes: int = 512 * 1024
    compression: str | None = None
    max_poll_records: int = 2000
    fetch_min_bytes: int = 262_144  # see CommonSettings.kafka_fetch_min_bytes
    fetch_max_wait_ms: int = 200
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 1_000
    max_poll_interval_ms: int = 120_000
    # Of the topics create_topics makes (a cluster: 3, with min.insync.replicas 2 on the brokers).
    replication_factor: int = 1


class KafkaBus:
    def __init__(self, config: KafkaConfig) -> None:
        self.config = config

    def producer(self) -> KafkaProducer:
        return KafkaProducer(self.config)

    def consumer(
        self,
        topics: Sequence[str],
        group: str,
        *,
        on_revoked: PartitionsCallback | None = None,
        on_assigned: PartitionsCallback | None = None,
    ) -> KafkaConsumer:
        return KafkaConsumer(self.config, list(topics), group, on_revoked, on_assigned)

    async def create_topics(self, topics: Sequence[TopicSpec]) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.config.bootstrap)
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            new = [
                NewTopic(name=t.name, num_partitions=t.partitions,
                         replication_factor=self.config.replication_factor)
                for t in topics
                if t.name not in existing
            ]
            if new:
                # A concurrent creator may win the race: the topic is there either way.
                with contextlib.suppress(TopicAlreadyExistsError):
                    await admin.create_topics(new)
                await self._wait_for_leaders(admin, [t.name for t in new])
        except KafkaConnectionError as exc:
            raise BrokerUnavailableError(f"Kafka at {self.config.bootstrap}: {exc}") from exc
        finally:
            await admin.close()

    @staticmethod
    async def _wait_for_leaders(admin: AIOKafkaAdminClient, names: list[str]) -> None:
        """Block (up to ~10 s) until every partition of the new topics has a leader.

        Producing before that draws NotLeaderForPartition retries from the broker.
        """
        for _ in range(100):
            described = await admin.describe_topics(names)
            if all(
                t.get("error_code") == 0 and t["partitions"]
                and all(p.get("leader", -1) >= 0 for p in t["partitions"])
                for t in described
            ):
                return
            await asyncio.sleep(0.1)

    async def close(self) -> None:
        return None


class KafkaProducer:
    def __init__(self, config: KafkaConfig) -> None:
        self._config = config
        self._producer: AIOKafkaProducer | None = None
        self._restart_pending = False  # restarted after a broken sequence, not running yet

    async def start(self) -> None:
        if self._producer is not None:
            return
        producer = AIOKafkaProducer(
            bootstrap_servers=self._config.bootstrap,
            client_id=self._config.client_id,
            acks="all",
            enable_idempotence=True,
            linger_ms=self._config.linger_ms,
            max_batch_size=self._config.max_batch_bytes,
            compression_type=self._config.compression,
        )
        try:
            await producer.start()
        except KafkaConnectionError as exc:
            await producer.stop()
            raise BrokerUnavailableError(f"Kafka at {self._config.bootstrap}: {exc}") from exc
        self._producer = producer
        self._restart_pending = False

    async def stop(self) -> None:
        self._restart_pending = False
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()  # flushes what is pending

    async def send_batch(self, topic: str, records: Sequence[KeyValue]) -> None:
        """Partition the records and hand whole record batches to aiokafka.

        Building batches directly skips aiokafka's per-record ``send`` (a
        future and a partitioner call per record: half the normaliser's CPU).
        Batches of one partition are queued in order, so per-key order holds;
        ``add_batch`` waits while the accumulator is full (backpressure).
        """
        if self._producer is None and self._restart_pending:
            await self.start()  # BrokerUnavailableError (retriable) while Kafka is still away
        producer = self._producer
        if producer is None:
            raise NotStartedError("KafkaProducer.send_batch before start()")
        if not records:
            return
        try:
            partitions = await self._partitions(producer, topic)
            by_partition: dict[int, list[KeyValue]] = {}
            for record in records:
                p = partitions[_partition_index(record[0], len(partitions))]
                by_partition.setdefault(p, []).append(record)
            futures = []
            for p, items in by_partition.items():
                batch = producer.create_batch()
                for key, value in items:
                    if batch.append(key=key, value=value, timestamp=None) is None:
                        if batch.record_count() == 0:
                            raise BrokerError(f"a record of {len(value)} bytes is too large for {topic}")
                        futures.append(await producer.send_batch(batch, topic, partition=p))
                        batch = producer.create_batch()
                        if batch.append(key=key, value=value, timestamp=None) is None:
                            raise BrokerError(f"a record of {len(value)} bytes is too large for {topic}")
                if batch.record_count():
                    futures.append(await producer.send_batch(batch, topic, partition=p))
            await asyncio.gather(*futures)
        except (OutOfOrderSequenceNumber, UnknownProducerId) as exc:
            # The idempotent producer's sequence broke: batches that expired during a long outage
            # (longer than the request timeout) left a gap. aiokafka cannot bump the epoch (the
            # Java client's KIP-360), so start a new producer (a new producer id) and let the
            # caller send again: at-least-once, and the consumers downstream are idempotent.
            await self._restart(producer)
            raise BrokerUnavailableError(f"produce to {topic} failed, producer restarted: {exc!r}") from exc
        except KafkaError as exc:
            error = BrokerUnavailableError if exc.retriable else BrokerError
            raise error(f"produce to {topic} failed: {exc!r}") from exc

    async def _restart(self, producer: AIOKafkaProducer) -> None:
        current = self._producer
        if current is None or current is not producer:
            return  # a concurrent send restarted it already
        self._producer = None
        self._restart_pending = True
        with contextlib.suppress(KafkaError, asyncio.TimeoutError):
            await asyncio.wait_for(current.stop(), 10)
        with contextlib.suppress(BrokerUnavailableError):
            await self.start()

    async def _partitions(self, producer: AIOKafkaProducer, topic: str) -> list[int]:
        parts = await producer.partitions_for(topic)  # cached metadata; fetched when missing
        if not parts:
            raise BrokerError(f"topic {topic!r} has no partitions (does it exist?)")
        return sorted(parts)


@functools.lru_cache(maxsize=1 << 18)
def _murmur2_positive(key: bytes) -> int:
    # Device ids repeat endlessly; the pure-Python murmur2 is worth caching.
    return int(murmur2(key)) & 0x7FFFFFFF


def _partition_index(key: bytes | None, count: int) -> int:
    """Kafka's default key -> partition mapping (murmur2, as the Java client)."""
    if key is None:
        return random.randrange(count)
    return _murmur2_positive(key) % count


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, on_revoked: PartitionsCallback | None, on_assigned: PartitionsCallback | None):
        self._on_revoked = on_revoked
        self._on_assigned = on_assigned

    async def on_partitions_revoked(self, revoked: Any) -> None:
        if self._on_revoked is not None and revoked:
            await self._on_revoked(frozenset(TopicPartition(tp.topic, tp.partition) for tp in revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        if self._on_assigned is not None and assigned:
            await self._on_assigned(frozenset(TopicPartition(tp.topic, tp.partition) for tp in assigned))


class KafkaConsumer:
    def __init__(
        self,
        config: KafkaConfig,
        topics: list[str],
        group: str,
        on_revoked: PartitionsCallback | None,
        on_assigned: PartitionsCallback | None,
    ) -> None:
        self._config = config
        self._topics = topics
        self._group = group
        self._listener = _Listener(on_revoked, on_assigned)
        self._consumer: AIOKafkaConsumer | None = None
        self._positions: dict[TopicPartition, int] = {}  # next offset after the last fetched

    async def start(self) -> None:
        if self._consumer is not None:
            return
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._config.bootstrap,
            client_id=self._config.client_id,
            group_id=self._group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self._config.max_poll_records,
            fetch_min_bytes=self._config.fetch_min_bytes,
            fetch_max_wait_ms=self._config.fetch_max_wait_ms,
            session_timeout_ms=self._config.session_timeout_ms,
            heartbeat_interval_ms=self._config.heartbeat_interval_ms,
            max_poll_interval_ms=self._config.max_poll_interval_ms,
            isolation_level="read_committed",
        )
        consumer.subscribe(self._topics, listener=self._listener)
        try:
            await consumer.start()
        except KafkaConnectionError as exc:
            await consumer.stop()
            raise BrokerUnavailableError(f"Kafka at {self._config.bootstrap}: {exc}") from exc
        self._consumer = consumer

    async def stop(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        try:
            # aiokafka leaves the group on stop() without calling the listener;
            # revoke first so the owner can commit while it is still a member.
            await self._listener.on_partitions_revoked(consumer.assignment())
        finally:
            self._consumer = None
            await consumer.stop()

    def assignment(self) -> frozenset[TopicPartition]:
        if self._consumer is None:
            return frozenset()
        return frozenset(TopicPartition(tp.topic, tp.partition) for tp in self._consumer.assignment())

    async def getmany(
        self, timeout_ms: int, max_records: int
    ) -> Mapping[TopicPartition, Sequence[Message]]:
        if self._consumer is None:
            raise NotStartedError("KafkaConsumer.getmany before start()")
        raw = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        for tp, msgs in raw.items():
            if msgs:
                self._positions[TopicPartition(tp.topic, tp.partition)] = msgs[-1].offset + 1
        return {
            TopicPartition(tp.topic, tp.partition): [
                Message(m.topic, m.partition, m.offset, m.key, m.value, m.timestamp) for m in msgs
            ]
            for tp, msgs in raw.items()
            if msgs
        }

    def lags(self) -> Mapping[TopicPartition, int]:
        """High watermark (as of the last fetch response) minus the next offset to hand out."""
        consumer = self._consumer
        if consumer is None:
            return {}
        out: dict[TopicPartition, int] = {}
        for ktp in consumer.assignment():
            tp = TopicPartition(ktp.topic, ktp.partition)
            high = consumer.highwater(ktp)
            position = self._positions.get(tp)
            if high is not None and position is not None:
                out[tp] = max(0, high - position)
        return out

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        if self._consumer is None:
            raise NotStartedError("KafkaConsumer.commit before start()")
        if not offsets:
            return
        try:
            await self._consumer.commit({KafkaTP(tp.topic, tp.partition): o for tp, o in offsets.items()})
        except (KafkaCommitFailed, IllegalGenerationError, RebalanceInProgressError,
                UnknownMemberIdError) as exc:
            raise CommitFailedError(f"commit of {dict(offsets)} failed: {exc!r}") from exc
        except KafkaConnectionError as exc:
            raise BrokerUnavailableError(f"commit failed: {exc!r}") from exc


def kafka_config(settings: CommonSettings, client_id: str) -> KafkaConfig:
    """The Kafka client settings of a deployable, from its ``CITYSENSE_`` settings."""
    if not settings.kafka_bootstrap:
        raise ValueError("CITYSENSE_KAFKA_BOOTSTRAP is not set")
    return KafkaConfig(
        bootstrap=settings.kafka_bootstrap, client_id=client_id, linger_ms=settings.kafka_linger_ms,
        replication_factor=settings.kafka_replication_factor,
        fetch_min_bytes=settings.kafka_fetch_min_bytes, fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
    )
