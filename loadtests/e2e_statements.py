"""Where PostgreSQL's time goes in an e2e run: ``pg_stat_statements`` of the bench database.

The extension needs ``shared_preload_libraries`` (``deploy/local/postgres.sh`` sets it) and a
superuser to create it: the benchmark connects as ``postgres`` through the local cluster's Unix
socket (``$CITYSENSE_STATE_DIR/pg/run``, trusted for that role), creates the extension in the
bench database, resets that database's entries at the start of the run and reads them at the
end. Anything missing (another cluster, no preload, no socket) turns the report off with a
note; the benchmark itself goes on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import psycopg

from citysense.settings import state_dir

TOP = 8


@dataclass(frozen=True, slots=True)
class Statements:
    conninfo: str  # superuser, bench database

    async def reset(self) -> None:
        async with await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True) as conn:
            await conn.execute(
                "SELECT pg_stat_statements_reset(0, (SELECT oid FROM pg_database"
                " WHERE datname = current_database()), 0)")

    async def top(self, n: int = TOP) -> list[dict[str, Any]]:
        """The bench database's statements by total execution time, most first."""
        async with await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True) as conn:
            cur = await conn.execute(
                """SELECT query, calls, total_exec_time, rows, shared_blks_hit + shared_blks_read,
                          wal_bytes
                   FROM pg_stat_statements
                   WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                   ORDER BY total_exec_time DESC LIMIT %s""", (n,))
            return [{"query": re.sub(r"\s+", " ", str(q)).strip(), "calls": int(c),
                     "total_s": round(float(t) / 1000, 3), "rows": int(r), "blocks": int(b),
                     "wal_mb": round(float(w) / 1e6, 1)}
                    for q, c, t, r, b, w in await cur.fetchall()]


async def open_statements(database_url: str) -> tuple[Statements | None, str]:
    """A handle on the bench database's statement statistics, or None and why not."""
    info = psycopg.conninfo.conninfo_to_dict(database_url)
    socket_dir = state_dir() / "pg" / "run"
    if not socket_dir.is_dir():
        return None, f"no local cluster socket at {socket_dir}"
    conninfo = psycopg.conninfo.make_conninfo(
        host=str(socket_dir), port=str(info.get("port") or 5432), user="postgres",
        dbname=str(info["dbname"]))
    try:
        async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
            cur = await conn.execute("SELECT current_setting('shared_preload_libraries')")
            row = await cur.fetchone()
            if not row or "pg_stat_statements" not in str(row[0]):
                return None, "pg_stat_statements is not in shared_preload_libraries (restart the cluster)"
            await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    except psycopg.Error as exc:
        return None, f"cannot reach the cluster as postgres ({exc.__class__.__name__}: {exc})"
    return Statements(conninfo), ""


def print_statements(top: list[dict[str, Any]], width: int = 110) -> None:
    print("  pg_stat_statements, bench database, whole run (by total execution time):")
    for s in top:
        query = s["query"] if len(s["query"]) <= width else s["query"][: width - 1] + "…"
        per = s["total_s"] / s["calls"] * 1e3 if s["calls"] else 0.0
        print(f"  {s['total_s']:8.2f} s {s['calls']:7,} calls {per:7.2f} ms/call {s['rows']:10,} rows"
              f" {s['wal_mb']:8.1f} MB WAL  {query}")
