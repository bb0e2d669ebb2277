"""The operators' audit trail: every consumer-group offset moved by hand (schema migration 8).

``citysense offsets skip`` records who moved which group past which record,
when and why, before it commits the new offset, and notes the commit once
Kafka accepted it; a row without ``committed_at`` is a skip that was tried
and did not happen. Rows are only ever inserted and completed, never deleted.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from storage.db import Conn

DDL: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS offset_skips (
           id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
           requested_at     timestamptz NOT NULL DEFAULT now(),
           operator         text        NOT NULL CHECK (operator <> ''),
           host             text        NOT NULL,
           consumer_group   text        NOT NULL,
           topic            text        NOT NULL,
           kafka_partition  int         NOT NULL CHECK (kafka_partition >= 0),
           from_offset      bigint      NOT NULL CHECK (from_offset >= 0),
           to_offset        bigint      NOT NULL CHECK (to_offset > from_offset),
           reason           text        NOT NULL CHECK (length(btrim(reason)) > 0),
           record_key       bytea,
           record_bytes     int         NOT NULL,
           record_sha256    text        NOT NULL,
           dead_letter_topic text,
           committed_at     timestamptz)""",
    "CREATE INDEX IF NOT EXISTS offset_skips_group ON offset_skips (consumer_group, topic, kafka_partition)",
)


@dataclass(frozen=True, slots=True)
class OffsetSkip:
    operator: str
    host: str
    group: str
    topic: str
    partition: int
    from_offset: int
    to_offset: int
    reason: str
    record_key: bytes | None
    record_bytes: int
    record_sha256: str
    dead_letter_topic: str | None


_INSERT = sql.SQL("""INSERT INTO offset_skips (operator, host, consumer_group, topic, kafka_partition,
        from_offset, to_offset, reason, record_key, record_bytes, record_sha256, dead_letter_topic)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id""")
_COMMITTED = sql.SQL("UPDATE offset_skips SET committed_at = now() WHERE id = %s AND committed_at IS NULL")
_LIST = sql.SQL("""SELECT id, requested_at, operator, host, consumer_group, topic, kafka_partition,
        from_offset, to_offset, reason, record_bytes, record_sha256, dead_letter_topic, committed_at
    FROM offset_skips ORDER BY id DESC LIMIT %s""")


async def record_skip(conn: Conn, skip: OffsetSkip) -> int:
    """Insert the audit row (committed on return); its id."""
    async with conn.transaction():
        cur = await conn.execute(_INSERT, (
            skip.operator, skip.host, skip.group, skip.topic, skip.partition, skip.from_offset,
            skip.to_offset, skip.reason, skip.record_key, skip.record_bytes, skip.record_sha256,
            skip.dead_letter_topic))
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def mark_committed(conn: Conn, skip_id: int) -> None:
    async with conn.transaction():
        await conn.execute(_COMMITTED, (skip_id,))


async def recent_skips(conn: Conn, limit: int = 20) -> list[tuple[object, ...]]:
    cur = await conn.execute(_LIST, (limit,))
    return list(await cur.fetchall())
