"""Record builders and database snapshots for the storage tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from psycopg import sql

from citysense.records import Health, Reading, RecordBatch, Status
from storage.db import Conn

# A fixed, minute-aligned "now" well inside any retention window would drift; tests
# that need partitions near the wall clock use real_now(), the rest use T0.
T0 = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)

TABLES = (
    "readings", "readings_1h", "latest_readings", "device_state",
    "charger_status", "charger_connectors", "charger_sessions", "device_health",
)


def ns(t: datetime) -> int:
    return int(t.timestamp()) * 1_000_000_000 + t.microsecond * 1000


def real_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def uplink(device: str, at: datetime, values: dict[str, float], *, received: datetime | None = None,
           seq: int = 0) -> RecordBatch:
    received_ns = ns(received or at)
    readings = tuple(Reading(device, m, ns(at), v, received_ns, seq) for m, v in values.items())
    return RecordBatch(device_id=device, received_ns=received_ns, readings=readings)


def backlog(device: str, start: datetime, step: timedelta, metric: str, values: list[float],
            *, received: datetime) -> RecordBatch:
    """An NB-IoT style wake-up: buffered readings of the past, received at once."""
    readings = tuple(
        Reading(device, metric, ns(start + i * step), v, ns(received), i) for i, v in enumerate(values))
    return RecordBatch(device_id=device, received_ns=ns(received), readings=readings)


def charger(
    device: str, at: datetime, connector: int, state: str, session: str = "", reason: str = ""
) -> RecordBatch:
    return RecordBatch(device_id=device, received_ns=ns(at),
                       statuses=(Status(device, connector, ns(at), state, "NoError", session, reason),))


def health(device: str, at: datetime, rsrp: float, battery: float | None = 3.6) -> RecordBatch:
    return RecordBatch(device_id=device, received_ns=ns(at),
                       health=(Health(device, ns(at), rsrp, 7.5, 1, battery),))


async def snapshot(conn: Conn) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every written relation, in a stable order."""
    out: dict[str, list[tuple[object, ...]]] = {}
    for table in TABLES:
        cur = await conn.execute(sql.SQL("SELECT * FROM {} ORDER BY 1, 2, 3").format(sql.Identifier(table)))
        out[table] = list(await cur.fetchall())
    return out


async def scalar(conn: Conn, query: sql.SQL | sql.Composed, *params: object) -> object:
    cur = await conn.execute(query, params or None)
    row = await cur.fetchone()
    assert row is not None
    return row[0]
