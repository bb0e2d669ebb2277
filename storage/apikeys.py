"""API keys (migration 7): stored as a SHA-256 of the token, never the token itself.

A token reads ``csk_<prefix>_<secret>``. The prefix is stored in clear and
indexed, so a lookup finds the one candidate row and the hash is compared in
constant time (``hmac.compare_digest``); the secret never reaches the database.
Revoking sets ``revoked_at``; a revoked key stays listed.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, LiteralString

from psycopg.rows import class_row

from storage.db import Conn
from storage.exceptions import StorageError

Role = Literal["viewer", "operator", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "admin")
TOKEN_PREFIX = "csk"  # noqa: S105  # a label, not a secret

APIKEYS_DDL: tuple[LiteralString, ...] = (
    """CREATE TABLE api_keys (
            key_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            name        text NOT NULL,
            role        text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
            prefix      text NOT NULL UNIQUE,
            key_hash    text NOT NULL,
            created_at  timestamptz NOT NULL DEFAULT now(),
            revoked_at  timestamptz)""",
    "CREATE UNIQUE INDEX api_keys_active_name ON api_keys (name) WHERE revoked_at IS NULL",
)


class ApiKeyError(StorageError):
    """An API key cannot be created or revoked as asked."""


@dataclass(frozen=True, slots=True)
class ApiKeyRow:
    key_id: int
    name: str
    role: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split_token(token: str) -> tuple[str, str] | None:
    """``(prefix, secret)`` of a well-formed token, else None."""
    parts = token.strip().split("_")
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


async def create_key(conn: Conn, name: str, role: Role) -> tuple[ApiKeyRow, str]:
    """A new key; returns its row and the token, which is shown once and not stored."""
    if role not in ROLES:
        raise ApiKeyError(f"role must be one of {', '.join(ROLES)}")
    prefix, secret = secrets.token_hex(6), secrets.token_urlsafe(32).replace("_", "-")
    async with conn.transaction(), conn.cursor(row_factory=class_row(ApiKeyRow)) as cur:
        await cur.execute("SELECT 1 FROM api_keys WHERE name = %s AND revoked_at IS NULL", (name,))
        if await cur.fetchone():
            raise ApiKeyError(f"an active key named {name!r} exists; revoke it first")
        await cur.execute(
            """INSERT INTO api_keys (name, role, prefix, key_hash) VALUES (%s, %s, %s, %s)
               RETURNING key_id, name, role, prefix, created_at, revoked_at""",
            (name, role, prefix, hash_secret(secret)))
        row = await cur.fetchone()
    assert row is not None
    return row, f"{TOKEN_PREFIX}_{prefix}_{secret}"


async def list_keys(conn: Conn) -> list[ApiKeyRow]:
    async with conn.cursor(row_factory=class_row(ApiKeyRow)) as cur:
        await cur.execute("SELECT key_id, name, role, prefix, created_at, revoked_at FROM api_keys"
                          " ORDER BY key_id")
        return await cur.fetchall()


async def revoke_key(conn: Conn, name_or_prefix: str) -> int:
    """Revoke the active key with that name or prefix; returns how many were revoked."""
    async with conn.transaction():
        cur = await conn.execute(
            "UPDATE api_keys SET revoked_at = now() WHERE revoked_at IS NULL AND (name = %s OR prefix = %s)",
            (name_or_prefix, name_or_prefix))
        return cur.rowcount


async def authenticate(conn: Conn, token: str) -> ApiKeyRow | None:
    """The active key this token belongs to, or None (malformed, unknown, wrong secret, revoked)."""
    parts = split_token(token)
    if parts is None:
        return None
    prefix, secret = parts
    cur = await conn.execute(
        "SELECT key_id, name, role, prefix, created_at, revoked_at, key_hash FROM api_keys"
        " WHERE prefix = %s AND revoked_at IS NULL", (prefix,))
    row = await cur.fetchone()
    if row is None or not hmac.compare_digest(str(row[6]), hash_secret(secret)):
        return None
    return ApiKeyRow(*row[:6])
