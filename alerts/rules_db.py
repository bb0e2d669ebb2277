"""Rules between files and the database (used by the CLI and the engine)."""

from __future__ import annotations

import psycopg

from alerts.rules import Receiver, Rule, RuleFile, from_definition, stored_definition
from alerts.settings import AlertSettings
from citysense.exceptions import ConfigurationError
from citysense.settings import load_settings
from storage import alert_rules_store, alerts_outbox_sql
from storage.alert_rules_store import RuleRow
from storage.db import Conn


def _url() -> str:
    settings = load_settings(AlertSettings)
    if settings.database_url is None:
        raise ConfigurationError("CITYSENSE_DATABASE_URL is not set (`citysense services up`, or export it)")
    return settings.database_url.get_secret_value()


async def apply_rules(conn: Conn, rule_file: RuleFile, *, source: str, actor: str) -> int:
    rows = [(r.id, r.name, r.enabled, stored_definition(r, rule_file.receivers)) for r in rule_file.rules]
    return await alert_rules_store.upsert_rules(conn, rows, source=source, actor=actor, replace_source=True)


async def apply_file(rule_file: RuleFile, *, source: str, actor: str) -> int:
    async with await psycopg.AsyncConnection.connect(_url()) as conn:
        return await apply_rules(conn, rule_file, source=source, actor=actor)


async def stored_rules() -> list[RuleRow]:
    async with await psycopg.AsyncConnection.connect(_url()) as conn:
        return await alert_rules_store.list_rules(conn)


async def load_enabled(conn: Conn) -> tuple[int, list[tuple[Rule, list[Receiver]]]]:
    """(rules version, enabled rules with their receivers); the version is read first, so a
    change in between only makes the next poll load again."""
    async with conn.transaction():
        version = await alert_rules_store.rules_version(conn)
        rows = await alert_rules_store.list_rules(conn, enabled_only=True)
    return version, [from_definition(r.definition) for r in rows]


async def parked_deliveries(limit: int) -> list[tuple[int, str, str, str | None]]:
    async with await psycopg.AsyncConnection.connect(_url()) as conn:
        return await alerts_outbox_sql.parked(conn, limit)


async def requeue_parked(outbox_ids: list[int]) -> int:
    async with await psycopg.AsyncConnection.connect(_url()) as conn:
        count = await alerts_outbox_sql.requeue_parked(conn, outbox_ids)
        await conn.commit()
        return count
