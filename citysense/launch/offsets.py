"""``citysense offsets skip``: move a stopped consumer group past one record, audited.

The supported way out when a stage is stuck on a record it can never handle
(nothing should get there: codecs refuse bad input, the writer bisects what
the database refuses; this is the operator's last resort, never a hand-edited
offset). In order:

1. the group must have no members (its stages are stopped) and be stuck exactly
   on ``--offset``: its committed offset on the partition equals it;
2. the record is read, and copied to the dead-letter topic (stage ``operator``,
   reason ``skipped_by_operator``) with the operator's reason, so nothing
   vanishes: it can be inspected with ``citysense dlq list``;
3. an audit row (who, host, when, why, group, topic, partition, from and to
   offsets, the record's key, size and SHA-256) goes into PostgreSQL
   (``offset_skips``, schema migration 8);
4. the offset after the record is committed for the group (Kafka refuses a
   commit from outside a group that has members again), and the audit row is
   marked committed.
"""

from __future__ import annotations

import asyncio
import getpass
import hashlib
import socket
import time
from dataclasses import dataclass
from typing import Annotated

import psycopg
import typer

from brokers import offsets
from brokers.base import TopicPartition
from brokers.kafka import KafkaBus, kafka_config
from citysense.exceptions import CitysenseError
from citysense.records import DeadLetter, encode
from citysense.settings import CommonSettings, load_settings
from storage import audit, migrations

offsets_app = typer.Typer(help="Move a stopped consumer group past a record, with an audit trail.",
                          no_args_is_help=True)

SKIPPED = "skipped_by_operator"
STAGE = "operator"
_MAX_ORIGINAL = 256 * 1024  # as ingest.dlq: a dead letter must fit Kafka's 1 MiB


class SkipRefusedError(CitysenseError):
    """The skip is not safe or not what the operator meant; nothing was changed."""


@dataclass(frozen=True, slots=True)
class SkipResult:
    audit_id: int
    from_offset: int
    to_offset: int
    record_bytes: int
    record_sha256: str


async def skip(
    s: CommonSettings, database_url: str, *, group: str, topic: str, partition: int, offset: int,
    reason: str, operator: str,
) -> SkipResult:
    """Steps 1-4 of the module docstring; raises ``SkipRefusedError`` before changing anything."""
    if not reason.strip():
        raise SkipRefusedError("--reason is required: say why the record is skipped")
    assert s.kafka_bootstrap
    bootstrap = s.kafka_bootstrap
    tp = TopicPartition(topic, partition)
    state = await offsets.describe_group(bootstrap, group)
    if not state.idle:
        raise SkipRefusedError(f"group {group!r} has {state.members} active member(s) (state {state.state}): "
                               "stop its consumers first")
    committed = await offsets.committed_offset(bootstrap, group, tp)
    if committed != offset:
        raise SkipRefusedError(f"group {group!r} is at offset {committed} on {topic}[{partition}], "
                               f"not {offset}: a skip moves a group past the record it is stuck on")
    record = await offsets.read_record(bootstrap, tp, offset)
    if record is None:
        raise SkipRefusedError(f"no record at {topic}[{partition}]@{offset}")
    digest = hashlib.sha256(record.value).hexdigest()
    who = f"{operator}@{socket.gethostname()}"
    letter = DeadLetter(SKIPPED, f"{reason} (skipped by {who}, group {group})", STAGE, topic, partition,
                        offset, record.value[:_MAX_ORIGINAL],
                        (record.key or b"")[:64].decode(errors="replace"), time.time_ns())
    producer = KafkaBus(kafka_config(s, "citysense-offsets")).producer()
    await producer.start()
    try:
        await producer.send_batch(s.topic_dlq, [(record.key, encode(letter))])
    finally:
        await producer.stop()
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        await migrations.require_current(conn)
        audit_id = await audit.record_skip(conn, audit.OffsetSkip(
            operator, socket.gethostname(), group, topic, partition, offset, offset + 1, reason,
            record.key, len(record.value), digest, s.topic_dlq))
        await offsets.commit_offset(bootstrap, group, tp, offset + 1,
                                    f"citysense offsets skip #{audit_id} by {who}")
        await audit.mark_committed(conn, audit_id)
    return SkipResult(audit_id, offset, offset + 1, len(record.value), digest)


@offsets_app.command("skip")
def skip_command(
    group: Annotated[str, typer.Option(help="consumer group, e.g. citysense-writer")],
    topic: Annotated[str, typer.Option(help="topic of the stuck record")],
    partition: Annotated[int, typer.Option(min=0)],
    offset: Annotated[int, typer.Option(min=0, help="offset of the record to skip (where the group is)")],
    reason: Annotated[str, typer.Option(help="why; kept in the audit trail and the dead letter")],
    operator: Annotated[str | None, typer.Option(help="who (default: the login name)")] = None,
) -> None:
    """Move a stopped group past one record: copied to the DLQ, audited in PostgreSQL."""
    s = load_settings(CommonSettings)
    if s.kafka_bootstrap is None or s.database_url is None:
        typer.echo("CITYSENSE_KAFKA_BOOTSTRAP and CITYSENSE_DATABASE_URL must be set", err=True)
        raise typer.Exit(2)
    try:
        result = asyncio.run(skip(
            s, s.database_url.get_secret_value(), group=group, topic=topic, partition=partition,
            offset=offset, reason=reason, operator=operator or getpass.getuser()))
    except SkipRefusedError as exc:
        typer.echo(f"refused: {exc}", err=True)
        raise typer.Exit(1) from None
    except CitysenseError as exc:
        typer.echo(f"failed: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"group {group} moved from {result.from_offset} to {result.to_offset} "
               f"on {topic}[{partition}]; "
               f"record ({result.record_bytes} bytes, sha256 {result.record_sha256[:16]}…) copied to "
               f"{s.topic_dlq}; audit #{result.audit_id}")


@offsets_app.command("audit")
def audit_command(limit: Annotated[int, typer.Option(min=1)] = 20) -> None:
    """The latest offset skips (audit trail)."""
    s = load_settings(CommonSettings)
    if s.database_url is None:
        typer.echo("CITYSENSE_DATABASE_URL is not set", err=True)
        raise typer.Exit(2)
    url = s.database_url.get_secret_value()

    async def rows() -> list[tuple[object, ...]]:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            return await audit.recent_skips(conn, limit)

    for row in asyncio.run(rows()):
        typer.echo("\t".join("" if v is None else str(v) for v in row))
