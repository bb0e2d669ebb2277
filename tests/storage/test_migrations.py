"""Migrations: versioned, idempotent, and refused when too old."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from citysense.settings import CommonSettings
from storage import migrations, rollups
from storage.exceptions import SchemaTooOldError
from storage.schema import POSTGRES
from storage.settings import WriterSettings

pytestmark = pytest.mark.services

ROOT = Path(__file__).resolve().parents[2]

CATALOG = """SELECT c.relname, c.relkind, a.attname, format_type(a.atttypid, a.atttypmod)
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0
             WHERE n.nspname = 'public' ORDER BY 1, 3"""


async def _catalog(conn: psycopg.AsyncConnection[tuple[object, ...]]) -> list[tuple[object, ...]]:
    cur = await conn.execute(CATALOG)
    return list(await cur.fetchall())


def _cli(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CITYSENSE_DATABASE_URL": database_url}
    command = str(Path(sys.executable).parent / "citysense")
    return subprocess.run([command, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


async def test_migrate_twice_is_a_no_op(empty_database: str) -> None:
    async with await psycopg.AsyncConnection.connect(empty_database) as conn:
        assert await migrations.migrate(conn) == [m.version for m in migrations.MIGRATIONS]
        before = await _catalog(conn)
        assert await migrations.migrate(conn) == []
        assert await _catalog(conn) == before
        assert await migrations.current_version(conn) == migrations.REQUIRED_VERSION
        await migrations.require_current(conn)


def test_db_migrate_command_twice_is_a_no_op(empty_database: str) -> None:
    first = _cli("db", "migrate", database_url=empty_database)
    assert first.returncode == 0, first.stderr
    assert f"applied migrations {[m.version for m in migrations.MIGRATIONS]}" in first.stdout
    second = _cli("db", "migrate", database_url=empty_database)
    assert second.returncode == 0, second.stderr
    assert "schema is up to date" in second.stdout


async def test_plain_postgres_records_its_backend(empty_database: str) -> None:
    async with await psycopg.AsyncConnection.connect(empty_database) as conn:
        await migrations.migrate(conn, prefer_timescale=False)
        assert await migrations.backend(conn) == POSTGRES
        cur = await conn.execute("SELECT relkind FROM pg_class WHERE relname = 'readings'")
        assert await cur.fetchone() == ("p",)  # partitioned


async def test_a_too_old_schema_is_refused_with_a_clear_message(empty_database: str) -> None:
    async with await psycopg.AsyncConnection.connect(empty_database) as conn:
        assert await migrations.migrate(conn, target=1) == [1]
        expected = rf"version 1, this code needs {migrations.REQUIRED_VERSION}: run `citysense db migrate`"
        with pytest.raises(SchemaTooOldError, match=expected):
            await migrations.require_current(conn)
        # and migrating finishes the job
        assert await migrations.migrate(conn) == [m.version for m in migrations.MIGRATIONS][1:]
        await migrations.require_current(conn)


async def test_migration_3_keeps_the_latest_values_it_moves(empty_database: str) -> None:
    """Latest values written under schema 2 (a table) read the same under 3 (a view)."""
    rows = [("a-1", "no2", "2030-06-01 12:00:00+00", 41.125, "2030-06-01 12:00:01+00"),
            ("a-1", "pm25", "2030-06-01 11:59:00.5+00", 12.5, "2030-06-01 12:00:01+00"),
            ("a-2", "pm25", "2030-05-31 08:00:00+00", -3.0, "2030-06-01 09:30:00+00")]
    select = "SELECT device_id, metric, time, value, received_at FROM latest_readings ORDER BY 1, 2"
    async with await psycopg.AsyncConnection.connect(empty_database) as conn:
        await migrations.migrate(conn, target=2, prefer_timescale=False)
        await conn.execute("INSERT INTO device_state VALUES ('a-2', '2030-06-01 09:30:00+00', NULL)")
        async with conn.cursor() as cur:
            await cur.executemany("INSERT INTO latest_readings VALUES (%s, %s, %s, %s, %s)", rows)
        before = await (await conn.execute(select)).fetchall()
        await conn.commit()
        assert await migrations.migrate(conn) == [m.version for m in migrations.MIGRATIONS][2:]
        assert await (await conn.execute(select)).fetchall() == before
        cur = await conn.execute(
            "SELECT device_id, last_seen, latest_time FROM device_state ORDER BY 1")
        assert [(d, str(seen.date()), str(latest.date())) for d, seen, latest in await cur.fetchall()] == [
            ("a-1", "2030-06-01", "2030-06-01"), ("a-2", "2030-06-01", "2030-05-31")]


async def test_the_writer_refuses_to_start_on_a_too_old_schema(
    empty_database: str, pipeline_settings: CommonSettings,
) -> None:
    from citysense.launch.runners import run_writer

    async with await psycopg.AsyncConnection.connect(empty_database) as conn:
        await migrations.migrate(conn, target=1)
    fields = {**pipeline_settings.model_dump(), "database_url": empty_database}
    settings = WriterSettings.model_validate(fields)
    with pytest.raises(SchemaTooOldError, match="run `citysense db migrate`"):
        await run_writer(settings)


def test_maintain_refuses_an_unmigrated_database(empty_database: str) -> None:
    result = _cli("db", "maintain", database_url=empty_database)
    assert result.returncode == 1
    assert "run `citysense db migrate`" in result.stderr



async def test_device_state_pages_keep_room_for_in_place_updates(empty_database: str) -> None:
    async with await psycopg.AsyncConnection.connect(empty_database) as conn:
        await migrations.migrate(conn, prefer_timescale=False)
        cur = await conn.execute("SELECT reloptions FROM pg_class WHERE relname = 'device_state'")
        assert await cur.fetchone() == (["fillfactor=50"],)


async def test_migration_9_drops_the_minute_rollup_and_keeps_hourly_entries(empty_database: str) -> None:
    """Written under schema 8: the 1-minute rollup and its dirty entries go, the hourly ones stay
    (whole buckets: device_id NULL) and are refreshed as before."""
    async with await psycopg.AsyncConnection.connect(empty_database) as conn:
        await migrations.migrate(conn, target=8, prefer_timescale=False)
        await conn.execute("""INSERT INTO rollup_dirty VALUES ('readings_1m', '2030-06-01 11:59+00'),
                              ('readings_1h', '2030-06-01 11:00+00'),
                              ('readings_1h', '2030-06-01 11:00+00')""")
        await conn.execute("""INSERT INTO readings_1h VALUES
                              ('a-1', 'pm25', '2030-06-01 10:00+00', 3, 1, 3, 3, '2030-06-01 10:30+00', 3)""")
        await conn.commit()
        assert await migrations.migrate(conn) == [9, 10]
        cur = await conn.execute("SELECT to_regclass('readings_1m') IS NULL, count(*) FROM readings_1h")
        assert await cur.fetchone() == (True, 1)
        cur = await conn.execute("SELECT rollup, bucket::text, device_id FROM rollup_dirty")
        assert await cur.fetchall() == [("readings_1h", "2030-06-01 11:00:00+00", None)] * 2
        await conn.commit()
        report = await rollups.refresh(conn, now=datetime(2030, 6, 1, 12, tzinfo=UTC))
        assert (report.buckets, report.devices) == ({"readings_1h": 1}, {"readings_1h": 0})
