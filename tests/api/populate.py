"""A populated county for the API tests: the county scenario's registry, an hour or three of
readings, charger connectors, radio health, a few alerts and an incident, and one key per role."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

import psycopg

from citysense.records import RecordBatch
from simulators.scenario_registry import export_scenario
from storage import apikeys, migrations, registry
from storage.db import open_pool
from storage.readings_sink import ReadingsSink
from tests.storage.factories import charger, health, real_now, uplink

BRIDGE_METRICS = ("crack_width_mm", "deflection_mm", "strain_ue")


@dataclass
class County:
    now: datetime
    tokens: dict[str, str]
    alert_ids: list[int]
    incident_id: int
    never_seen: str  # a device with no uplink (offline)
    late: str  # a device last heard between 1.5 and 3 report intervals ago
    stations: int


def _batches(now: datetime, devices: list[dict[str, object]]) -> list[RecordBatch]:
    rng = random.Random(7)
    out: list[RecordBatch] = []
    bridges = [d for d in devices if d["kind"] == "bridge"]
    for d in bridges:  # three hours, one uplink a minute
        for m in range(180, 0, -1):
            at = now - timedelta(minutes=m)
            out.append(uplink(str(d["device_id"]), at, {k: rng.uniform(0, 1) for k in BRIDGE_METRICS}))
    for d in devices:
        if d["kind"] in ("air", "weather", "env"):
            out.append(uplink(str(d["device_id"]), now - timedelta(seconds=30), {"temperature": 21.5}))
            out.append(health(str(d["device_id"]), now - timedelta(seconds=30), -95.0, 3.55))
    chargers = [d for d in devices if d["kind"] == "charger"]
    states = ("Available", "Charging", "Faulted", "Available")
    for i, d in enumerate(chargers):
        out.append(charger(str(d["device_id"]), now - timedelta(seconds=20), 1, states[i % 4],
                           session=f"s{i}" if i % 4 == 1 else ""))
    return out


async def _alerts(conn: psycopg.AsyncConnection[object], now: datetime) -> tuple[list[int], int]:
    cur = await conn.execute(
        """INSERT INTO alert_incidents (site_id, grade, first_seen, last_seen, member_count)
           VALUES ('site-brg-01', 1, %s, %s, 2) RETURNING incident_id""", (now, now))
    row = await cur.fetchone()
    assert row is not None
    incident = int(row[0])
    ids: list[int] = []
    rows = [("bridge-crack", "brg-01", "site-brg-01", 1, "firing", incident),
            ("bridge-deflection", "brg-01", "site-brg-01", 2, "firing", incident),
            ("bridge-crack", "brg-02", "site-brg-02", 3, "firing", None),
            ("charger-fault", "chg-00002", "site-chs-001", 4, "pending", None),
            ("bridge-crack", "brg-03", "site-brg-03", 2, "resolved", None)]
    for rule, device, site, grade, state, inc in rows:
        cur = await conn.execute(
            """INSERT INTO alerts (rule_id, device_id, site_id, condition, metric, state, grade, value,
                                   incident_id, started_at, fired_at, resolved_at, last_seq)
               VALUES (%s, %s, %s, 'threshold', 'crack_width_mm', %s, %s, 0.9, %s, %s, %s, %s, 1)
               RETURNING alert_id""",
            (rule, device, site, state, grade, inc, now, now if state != "pending" else None,
             now if state == "resolved" else None))
        row = await cur.fetchone()
        assert row is not None
        ids.append(int(row[0]))
        await conn.execute(
            """INSERT INTO alert_transitions (alert_id, seq, action, to_state, grade, acknowledged, actor)
               VALUES (%s, 1, 'fired', %s, %s, false, 'engine')""", (ids[-1], state, grade))
    return ids, incident


async def populate(url: str, now: datetime | None = None) -> County:
    """Fill a database (migrated here on PostgreSQL unless already migrated, e.g. on TimescaleDB)."""
    now = now or real_now()
    data = export_scenario("county", None)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await migrations.migrate(conn, prefer_timescale=False)
        await registry.import_registry(conn, registry.Registry.model_validate(data))
        # one air device was last heard 2 report intervals ago: late
        late = next(d for d in data["devices"] if d["kind"] == "meter")
        tokens = {}
        for role in apikeys.ROLES:
            _, tokens[role] = await apikeys.create_key(conn, f"test-{role}", role)
    pool = await open_pool(url, max_size=2)
    try:
        sink = ReadingsSink(pool)
        batches = _batches(now, data["devices"])
        late_at = now - timedelta(seconds=float(late["report_interval_s"]) * 2)
        batches.append(uplink(str(late["device_id"]), late_at, {"volume_m3": 12.0}))
        for i in range(0, len(batches), 2000):
            await sink.write(batches[i:i + 2000])
        await sink.flush()
    finally:
        await pool.close()
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        alert_ids, incident = await _alerts(conn, now)
    never = next(d["device_id"] for d in data["devices"]
                 if d["kind"] == "meter" and d["device_id"] != late["device_id"])
    stations = sum(1 for s in data["sites"] if s["kind"] == "charging_station")
    return County(now, tokens, alert_ids, incident, str(never), str(late["device_id"]), stations)
