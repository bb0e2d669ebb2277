"""Alert rules and silences as rows.

A rule is stored as the JSON of its validated model (``alerts.rules``
validates; this module stores). Every change bumps ``alert_rules_version``
in the same transaction, which running engines poll to reload their rules.
``replace_rules`` applies a whole rule file at once: all of it or nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import sql
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from storage.db import Conn


@dataclass(frozen=True, slots=True)
class RuleRow:
    rule_id: str
    name: str
    enabled: bool
    definition: dict[str, Any]
    source: str
    updated_by: str
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class SilenceRow:
    silence_id: int
    selector: dict[str, Any]
    starts_at: datetime
    ends_at: datetime
    created_by: str
    reason: str
    created_at: datetime
    expired_at: datetime | None


_RULE_COLS = sql.SQL(", ").join(sql.Identifier(f) for f in RuleRow.__dataclass_fields__)
_SILENCE_COLS = sql.SQL(", ").join(sql.Identifier(f) for f in SilenceRow.__dataclass_fields__)


async def rules_version(conn: Conn) -> int:
    cur = await conn.execute("SELECT version FROM alert_rules_version")
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def _bump(conn: Conn) -> int:
    cur = await conn.execute("UPDATE alert_rules_version SET version = version + 1 RETURNING version")
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def list_rules(conn: Conn, *, enabled_only: bool = False) -> list[RuleRow]:
    async with conn.cursor(row_factory=class_row(RuleRow)) as cur:
        await cur.execute(
            sql.SQL("SELECT {} FROM alert_rules WHERE enabled OR NOT %s ORDER BY rule_id").format(
                _RULE_COLS), (enabled_only,))
        return await cur.fetchall()


async def get_rule(conn: Conn, rule_id: str) -> RuleRow | None:
    async with conn.cursor(row_factory=class_row(RuleRow)) as cur:
        await cur.execute(sql.SQL("SELECT {} FROM alert_rules WHERE rule_id = %s").format(_RULE_COLS),
                          (rule_id,))
        return await cur.fetchone()


async def upsert_rules(conn: Conn, rules: Sequence[tuple[str, str, bool, dict[str, Any]]], *,
                       source: str, actor: str, replace_source: bool = False) -> int:
    """Insert or update ``(rule_id, name, enabled, definition)`` rows in one transaction;
    with ``replace_source``, rules from the same source that are not given are deleted
    (a rule file applied again is the whole truth for that file). Returns the new version."""
    async with conn.transaction(), conn.cursor() as cur:
        await cur.executemany(
            """INSERT INTO alert_rules (rule_id, name, enabled, definition, source, updated_by)
               VALUES (%s, %s, %s, %s, %s, %s)
               ON CONFLICT (rule_id) DO UPDATE SET name = excluded.name, enabled = excluded.enabled,
                   definition = excluded.definition, source = excluded.source,
                   updated_by = excluded.updated_by, updated_at = now()""",
            [(rid, name, enabled, Jsonb(d), source, actor) for rid, name, enabled, d in rules])
        if replace_source:
            await cur.execute("DELETE FROM alert_rules WHERE source = %s AND NOT (rule_id = ANY(%s))",
                              (source, [r[0] for r in rules]))
        return await _bump(conn)


async def delete_rule(conn: Conn, rule_id: str) -> bool:
    async with conn.transaction():
        cur = await conn.execute("DELETE FROM alert_rules WHERE rule_id = %s", (rule_id,))
        if cur.rowcount == 0:
            return False
        await _bump(conn)
        return True


async def set_rule_enabled(conn: Conn, rule_id: str, enabled: bool, actor: str) -> bool:
    async with conn.transaction():
        cur = await conn.execute(
            "UPDATE alert_rules SET enabled = %s, updated_by = %s, updated_at = now() WHERE rule_id = %s",
            (enabled, actor, rule_id))
        if cur.rowcount == 0:
            return False
        await _bump(conn)
        return True


async def create_silence(conn: Conn, selector: dict[str, Any], starts_at: datetime, ends_at: datetime,
                         created_by: str, reason: str) -> int:
    """Silence notifications of alerts matching ``selector`` (a rule selector's fields plus
    ``rule_ids``) from ``starts_at`` to ``ends_at``. Alerts still change state; only their
    notifications are held back (the alert row says ``suppressed = 'silenced'``)."""
    async with conn.transaction():
        cur = await conn.execute(
            """INSERT INTO alert_silences (selector, starts_at, ends_at, created_by, reason)
               VALUES (%s, %s, %s, %s, %s) RETURNING silence_id""",
            (Jsonb(selector), starts_at, ends_at, created_by, reason))
        row = await cur.fetchone()
        assert row is not None
        await _bump(conn)  # engines reload silences with rules
        return int(row[0])


async def expire_silence(conn: Conn, silence_id: int) -> bool:
    async with conn.transaction():
        cur = await conn.execute(
            "UPDATE alert_silences SET expired_at = now() WHERE silence_id = %s AND expired_at IS NULL",
            (silence_id,))
        if cur.rowcount == 0:
            return False
        await _bump(conn)
        return True


async def list_silences(conn: Conn, *, active_at: datetime | None = None) -> list[SilenceRow]:
    """All unexpired silences, or only those in force at ``active_at``."""
    async with conn.cursor(row_factory=class_row(SilenceRow)) as cur:
        await cur.execute(
            sql.SQL("SELECT {} FROM alert_silences WHERE expired_at IS NULL"
                    " AND (%s::timestamptz IS NULL OR (starts_at <= %s AND ends_at > %s))"
                    " ORDER BY silence_id").format(_SILENCE_COLS), (active_at, active_at, active_at))
        return await cur.fetchall()
