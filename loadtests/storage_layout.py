"""Narrow (one row per value) against wide (one row per uplink, a column per metric) tables.

    .venv/bin/python -m loadtests.storage_layout

Same uplinks into both layouts in a scratch database (created and dropped):
binary COPY speed, the writer's staged insert-or-ignore speed, bytes per
value, and query latency (a day's 1-minute series of one metric, latest per
device, readings per device). About 30 s; the machine may be shared.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg import sql

from loadtests.storage_common import METRICS, latency_ms, scratch_database, uplinks, utc

START = datetime(2031, 1, 1, tzinfo=UTC)
DEVICES, PER_DEVICE = 200, 300  # 60,000 uplinks, 360,000 values

_DDL = (
    """CREATE TABLE narrow (device_id text NOT NULL, metric text NOT NULL, time timestamptz NOT NULL,
        value double precision NOT NULL, received_at timestamptz NOT NULL,
        PRIMARY KEY (device_id, metric, time))""",
    """CREATE TABLE wide (device_id text NOT NULL, time timestamptz NOT NULL,
        received_at timestamptz NOT NULL,
        pm25 double precision, pm10 double precision, no2 double precision, o3 double precision,
        temperature double precision, humidity double precision, PRIMARY KEY (device_id, time))""",
)


async def _copy(conn: psycopg.AsyncConnection[tuple[object, ...]], table: str, columns: list[str],
                types: list[str], rows: Sequence[tuple[object, ...]]) -> float:
    copy_sql = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns)))
    t = time.perf_counter()
    for i in range(0, len(rows), 5000):
        async with conn.transaction(), conn.cursor() as cur, cur.copy(copy_sql) as copy:
            copy.set_types(types)
            for row in rows[i : i + 5000]:
                await copy.write_row(row)
    return time.perf_counter() - t


async def main() -> None:
    stream = uplinks(DEVICES, PER_DEVICE, START)
    narrow_rows = [(r.device_id, r.metric, utc(r.time_ns), r.value, utc(r.received_ns))
                   for b in stream for r in b.readings]
    wide_rows = [(b.device_id, utc(b.readings[0].time_ns), utc(b.received_ns), *(r.value for r in b.readings))
                 for b in stream]
    values = len(narrow_rows)
    async with scratch_database("cs_layout") as url, \
            await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for ddl in _DDL:
            await conn.execute(sql.SQL(ddl))
        await conn.set_autocommit(False)
        n_secs = await _copy(conn, "narrow", ["device_id", "metric", "time", "value", "received_at"],
                             ["text", "text", "timestamptz", "float8", "timestamptz"], narrow_rows)
        w_secs = await _copy(conn, "wide", ["device_id", "time", "received_at", *METRICS],
                             ["text", "timestamptz", "timestamptz"] + ["float8"] * 6, wide_rows)
        print(f"{len(stream):,} uplinks = {values:,} values")
        print(f"  binary COPY   narrow {values / n_secs:>9,.0f} values/s"
              f"   wide {values / w_secs:>9,.0f} values/s")
        # The writer's path: staged rows moved with insert-or-ignore (all duplicates here: the worst case
        # for the check, none inserted) and a fresh copy of the data shifted by a day.
        for table, shift in (("narrow", "time + interval '1 day'"), ("wide", "time + interval '1 day'")):
            cols = "device_id, metric, time, value, received_at" if table == "narrow" else \
                "device_id, time, received_at, pm25, pm10, no2, o3, temperature, humidity"
            select = cols.replace("time,", f"{shift},", 1) if table == "narrow" else \
                cols.replace(" time,", f" {shift},", 1)
            t = time.perf_counter()
            async with conn.transaction():
                await conn.execute(  # constant table and column names, no values
                    f"INSERT INTO {table} ({cols}) SELECT {select} FROM {table} ON CONFLICT DO NOTHING")  # noqa: S608
            rate = values / (time.perf_counter() - t)
            print(f"  INSERT..SELECT ON CONFLICT {table:<6} {rate:>9,.0f} values/s")
        await conn.commit()
        await conn.set_autocommit(True)
        await conn.execute("VACUUM ANALYZE narrow")
        await conn.execute("VACUUM ANALYZE wide")
        for table in ("narrow", "wide"):
            cur = await conn.execute("SELECT pg_total_relation_size(%s)", (table,))
            size = (await cur.fetchone() or [0])[0]
            print(f"  size {table:<6} {size / 2**20:7.1f} MiB  {size / (2 * values):6.1f} bytes/value")
        day = (START, START + timedelta(days=1))
        cases = {
            "1-minute series of one metric, one day": (
                ("SELECT date_bin('1 minute', time, '2000-01-03'), avg(value) FROM narrow "
                 "WHERE device_id = 'air-00042' AND metric = 'no2' AND time >= %s AND time < %s GROUP BY 1"),
                ("SELECT date_bin('1 minute', time, '2000-01-03'), avg(no2) FROM wide "
                 "WHERE device_id = 'air-00042' AND time >= %s AND time < %s GROUP BY 1")),
            "latest value per device and metric": (
                "SELECT DISTINCT ON (device_id, metric) * FROM narrow ORDER BY device_id, metric, time DESC",
                "SELECT DISTINCT ON (device_id) * FROM wide ORDER BY device_id, time DESC"),
            "values per device, one day": (
                "SELECT device_id, count(*) FROM narrow WHERE time >= %s AND time < %s GROUP BY 1",
                "SELECT device_id, 6 * count(*) FROM wide WHERE time >= %s AND time < %s GROUP BY 1"),
        }
        print("  query latency, median ms:           narrow      wide")
        for name, (narrow_q, wide_q) in cases.items():
            got = []
            for q in (narrow_q, wide_q):
                params = day if "%s" in q else None

                async def run(q: str = q, params: tuple[datetime, datetime] | None = params) -> None:
                    await (await conn.execute(q, params)).fetchall()

                got.append((await latency_ms(run, 5))[0])
            print(f"  {name:<36} {got[0]:8.1f}  {got[1]:8.1f}")


if __name__ == "__main__":
    asyncio.run(main())
