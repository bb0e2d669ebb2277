"""Issue 12, finding 1: the supported, audited way to move a stopped consumer group past a record.

Real Kafka and PostgreSQL: refused while the group has a member, refused at an
offset the group is not stuck on, refused without a reason; otherwise the record
is copied to the DLQ, an audit row says who/when/why/what, and the group moves
by exactly one.
"""

from __future__ import annotations

import hashlib

import psycopg
import pytest

from brokers.base import TopicPartition, TopicSpec
from brokers.kafka import KafkaBus
from citysense.launch.offsets import SkipRefusedError, skip
from citysense.settings import CommonSettings
from ingest.dlq import scan

pytestmark = [pytest.mark.services]


async def test_skip_is_refused_while_running_and_audited_when_done(
    kafka_bus: KafkaBus, pipeline_settings: CommonSettings, database: str, unique: str,
) -> None:
    s = pipeline_settings
    topic, group = s.topic_readings, f"test-{unique}-writer"
    await kafka_bus.create_topics([TopicSpec(topic, 1), TopicSpec(s.topic_dlq, 1)])
    producer = kafka_bus.producer()
    await producer.start()
    await producer.send_batch(topic, [(b"k0", b"fine"), (b"k1", b"poison " * 10), (b"k2", b"fine too")])
    await producer.stop()
    tp = TopicPartition(topic, 0)

    # A stage that handled record 0 and is stuck on record 1, and is still running.
    consumer = kafka_bus.consumer([topic], group)
    await consumer.start()
    got: dict[TopicPartition, int] = {}
    for _ in range(40):
        for part, msgs in (await consumer.getmany(500, 1)).items():
            got[part] = msgs[0].offset
        if got:
            break
    assert got == {tp: 0}
    await consumer.commit({tp: 1})
    args = {"group": group, "topic": topic, "partition": 0, "reason": "poison record, see ticket 42",
            "operator": "alice"}
    with pytest.raises(SkipRefusedError, match="active member"):
        await skip(s, database, offset=1, **args)
    await consumer.stop()

    with pytest.raises(SkipRefusedError, match="is at offset 1"):
        await skip(s, database, offset=2, **args)
    with pytest.raises(SkipRefusedError, match="reason"):
        await skip(s, database, offset=1, **(args | {"reason": "  "}))

    result = await skip(s, database, offset=1, **args)
    assert (result.from_offset, result.to_offset) == (1, 2)

    # The group moved by exactly one: a new member starts at record 2.
    consumer = kafka_bus.consumer([topic], group)
    await consumer.start()
    first = None
    for _ in range(40):
        batches = await consumer.getmany(500, 10)
        if batches:
            first = next(iter(batches.values()))[0]
            break
    await consumer.stop()
    assert first is not None and (first.offset, first.value) == (2, b"fine too")

    # The record is in the DLQ with the reason and who; the audit row says what and when.
    letters = (await scan(kafka_bus, s.topic_dlq, idle_ms=1500)).letters
    assert [(d.reason_code, d.stage, d.source_offset, d.original) for d in letters] == [
        ("skipped_by_operator", "operator", 1, b"poison " * 10)]
    assert "ticket 42" in letters[0].message and "alice@" in letters[0].message
    async with await psycopg.AsyncConnection.connect(database) as conn:
        cur = await conn.execute(
            "SELECT operator, consumer_group, topic, kafka_partition, from_offset, to_offset, reason,"
            " record_key, record_sha256, committed_at IS NOT NULL, requested_at <= now() FROM offset_skips")
        rows = await cur.fetchall()
    assert rows == [("alice", group, topic, 0, 1, 2, "poison record, see ticket 42", b"k1",
                     hashlib.sha256(b"poison " * 10).hexdigest(), True, True)]


def test_the_command_is_wired_and_refuses_without_a_reason() -> None:
    """The typer command, before any I/O: a blank reason changes nothing."""
    from typer.testing import CliRunner

    from citysense.launch.cli import app

    env = {"CITYSENSE_KAFKA_BOOTSTRAP": "127.0.0.1:1",
           "CITYSENSE_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/x"}
    args = ["offsets", "skip", "--group", "g", "--topic", "t", "--partition", "0", "--offset", "5",
            "--reason", "   "]
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 1 and "refused: --reason is required" in result.output
    missing = CliRunner().invoke(app, ["offsets", "skip", "--group", "g"], env=env)
    assert missing.exit_code == 2  # the other options are required
