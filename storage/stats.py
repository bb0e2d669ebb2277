"""Small counters for progress lines (demo, tools)."""

from __future__ import annotations

from typing import Any

import psycopg


async def count_readings(conn: psycopg.AsyncConnection[Any]) -> int:
    cur = await conn.execute("SELECT count(*) FROM readings")
    row = await cur.fetchone()
    return int(row[0]) if row else 0
