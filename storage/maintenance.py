"""Routine maintenance: rollup refresh, partitions ahead, retention, policy reconciliation.

PostgreSQL path: recompute dirty rollup buckets (``storage.rollups``, first,
so no bucket loses raw rows before it is rolled up), create partitions
``partitions_ahead`` intervals past now, drop partitions past retention,
delete rollup rows past their retention. The writer also runs the rollup
refresh alone every ``rollup_refresh_interval_s``.
TimescaleDB path: reconcile the policies with the settings (the
extension's own jobs do the work). Safe to run from several writers at once
(advisory locks) and as often as wanted (idempotent).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from citysense.exceptions import CitysenseError
from storage import migrations, partitions, rollups, timescale
from storage.db import Conn
from storage.schema import TIME_SERIES_TABLES, TIMESCALE, Backend
from storage.settings import StorageSettings

log = logging.getLogger(__name__)


@dataclass(slots=True)
class MaintenanceReport:
    backend: Backend
    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    rollup_rows_deleted: int = 0
    refreshed: rollups.RefreshReport | None = None

    def summary(self) -> str:
        refreshed = f"; {self.refreshed.summary()}" if self.refreshed else ""
        return (f"{self.backend}: {len(self.created)} partitions created, {len(self.dropped)} dropped, "
                f"{self.rollup_rows_deleted} rollup rows expired{refreshed}")


async def maintain(
    conn: Conn, settings: StorageSettings, *, now: datetime | None = None
) -> MaintenanceReport:
    await migrations.require_current(conn)
    now = now or datetime.now(UTC)
    report = MaintenanceReport(await migrations.backend(conn))
    await conn.commit()
    if report.backend == TIMESCALE:
        async with conn.transaction():
            await timescale.configure_policies(conn, settings)
        return report
    report.refreshed = await rollups.refresh(conn, now=now)
    width = settings.chunk_interval
    for table in TIME_SERIES_TABLES:
        report.created += await partitions.ensure_ahead(conn, table, now, width, settings.partitions_ahead)
        report.dropped += await partitions.drop_expired(conn, table, now - settings.retention)
    keep = {"readings_1h": settings.rollup_1h_retention}
    for rollup, retention in keep.items():
        async with conn.transaction():
            delete = sql.SQL("DELETE FROM {} WHERE bucket < %s").format(sql.Identifier(rollup))
            cur = await conn.execute(delete, (now - retention,))
            report.rollup_rows_deleted += max(cur.rowcount, 0)
    return report


async def run_periodically(pool: AsyncConnectionPool, settings: StorageSettings, stop: asyncio.Event) -> None:
    """Until ``stop`` is set: maintain at start and every ``maintenance_interval_s``, and refresh
    rollups every ``rollup_refresh_interval_s`` (0 disables either); failures are logged."""
    async def maintenance() -> None:
        async with pool.connection() as conn:
            log.info("maintenance: %s", (await maintain(conn, settings)).summary())

    async def refresh() -> None:
        async with pool.connection() as conn:
            report = await rollups.refresh(conn)
            if any(report.buckets.values()) or report.skipped:
                log.debug("%s", report.summary())

    await asyncio.gather(
        _every(settings.maintenance_interval_s, maintenance, "maintenance", stop),
        _every(settings.rollup_refresh_interval_s, refresh, "rollup refresh", stop))


async def _every(
    interval_s: float, job: Callable[[], Awaitable[None]], what: str, stop: asyncio.Event
) -> None:
    if interval_s <= 0:
        return
    while not stop.is_set():
        try:
            await job()
        except (psycopg.Error, CitysenseError) as exc:  # never take the writer down; retry next round
            log.warning("%s failed, will try again: %s", what, exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
