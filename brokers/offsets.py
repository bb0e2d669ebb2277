"""A consumer group's committed offsets, read and moved by an operator (not by a stage).

``citysense offsets skip`` uses these to move a group stuck on one record past
it. Kafka itself only accepts a commit from outside the group (generation -1)
while the group has no members, which is the guard behind the tool's own check:
a running stage is never moved under its feet.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer
from aiokafka import TopicPartition as KafkaTP
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

from brokers.base import Message, TopicPartition
from brokers.exceptions import BrokerError, BrokerUnavailableError

# Group states (Kafka's GroupState) in which no consumer holds a partition.
IDLE_STATES = frozenset({"Empty", "Dead"})


@dataclass(frozen=True, slots=True)
class GroupState:
    state: str
    members: int

    @property
    def idle(self) -> bool:
        return self.members == 0 and self.state in IDLE_STATES


async def _admin(bootstrap: str) -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="citysense-offsets")
    try:
        await admin.start()
    except KafkaError as exc:
        await admin.close()
        raise BrokerUnavailableError(f"Kafka at {bootstrap}: {exc!r}") from exc
    return admin


async def describe_group(bootstrap: str, group: str, *, attempts: int = 10) -> GroupState:
    """The group's state and member count (a group Kafka has never seen is ``Dead``)."""
    admin = await _admin(bootstrap)
    try:
        for attempt in range(attempts):
            try:
                responses = await admin.describe_consumer_groups([group])
                break
            except KafkaError as exc:  # the coordinator may be loading or just created
                if attempt == attempts - 1:
                    raise BrokerUnavailableError(f"cannot describe group {group!r}: {exc!r}") from exc
                await asyncio.sleep(0.5)
        for response in responses:
            for error_code, group_id, state, _ptype, _protocol, members, *_ in response.groups:
                if group_id == group:
                    if error_code:
                        raise BrokerError(f"describing group {group!r} failed: error {error_code}")
                    return GroupState(str(state), len(members))
        raise BrokerError(f"Kafka did not describe group {group!r}")
    finally:
        await admin.close()


async def committed_offset(bootstrap: str, group: str, tp: TopicPartition) -> int | None:
    """The group's committed offset (the next record it will read) on ``tp``, or None."""
    admin = await _admin(bootstrap)
    try:
        offsets = await admin.list_consumer_group_offsets(group, partitions=[KafkaTP(*tp)])
    except KafkaError as exc:
        raise BrokerUnavailableError(f"cannot read the offsets of {group!r}: {exc!r}") from exc
    finally:
        await admin.close()
    got = offsets.get(KafkaTP(*tp))
    return None if got is None or got.offset < 0 else int(got.offset)


async def read_record(
    bootstrap: str, tp: TopicPartition, offset: int, *, timeout_s: float = 10.0
) -> Message | None:
    """The record at ``offset`` (None if there is none: compacted, aborted, not written yet).

    Read without a group, so nothing is committed anywhere."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                isolation_level="read_committed", client_id="citysense-offsets")
    try:
        await consumer.start()
    except KafkaError as exc:
        await consumer.stop()
        raise BrokerUnavailableError(f"Kafka at {bootstrap}: {exc!r}") from exc
    try:
        ktp = KafkaTP(*tp)
        consumer.assign([ktp])
        consumer.seek(ktp, offset)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while True:
                    got = await consumer.getmany(ktp, timeout_ms=500, max_records=1)
                    for m in got.get(ktp, []):
                        if m.offset != offset:
                            return None
                        return Message(m.topic, m.partition, m.offset, m.key, m.value, m.timestamp)
        return None
    finally:
        await consumer.stop()


async def commit_offset(bootstrap: str, group: str, tp: TopicPartition, offset: int, metadata: str) -> None:
    """Commit ``offset`` for ``group`` from outside it (Kafka refuses while it has members)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
                                client_id="citysense-offsets")
    try:
        await consumer.start()
    except KafkaError as exc:
        await consumer.stop()
        raise BrokerUnavailableError(f"Kafka at {bootstrap}: {exc!r}") from exc
    try:
        ktp = KafkaTP(*tp)
        consumer.assign([ktp])
        await consumer.commit({ktp: OffsetAndMetadata(offset, metadata)})
    except KafkaError as exc:
        raise BrokerError(f"Kafka refused to move {group!r} on {tp.topic}[{tp.partition}]: {exc!r}") from exc
    finally:
        await consumer.stop()
