"""The alert tables and their storage queries (real PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from storage import alert_rules_store as rules
from storage import alerts_store as store

pytestmark = pytest.mark.services


async def _open_alert(conn: psycopg.AsyncConnection, rule: str, device: str) -> int:
    cur = await conn.execute(
        """INSERT INTO alerts (rule_id, device_id, condition, state, grade, started_at, last_seq)
           VALUES (%s, %s, 'threshold', 'firing', 3, now(), 1) RETURNING alert_id""", (rule, device))
    row = await cur.fetchone()
    assert row
    await conn.execute(
        """INSERT INTO alert_transitions (alert_id, seq, action, to_state, grade, acknowledged, actor)
           VALUES (%s, 1, 'fired', 'firing', 3, false, 'engine')""", (row[0],))
    return int(row[0])


async def test_one_open_alert_per_rule_and_device(database: str) -> None:
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        first = await _open_alert(conn, "r1", "d1")
        with pytest.raises(psycopg.errors.UniqueViolation):
            await _open_alert(conn, "r1", "d1")
        await store.resolve(conn, first, "alice", "checked on site")
        second = await _open_alert(conn, "r1", "d1")  # allowed once the first is resolved
        assert second != first


async def test_acknowledge_and_resolve_record_transitions(database: str) -> None:
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        alert_id = await _open_alert(conn, "r1", "d1")
        acked = await store.acknowledge(conn, alert_id, "alice", "on my way")
        assert acked.acknowledged and acked.acknowledged_by == "alice"
        again = await store.acknowledge(conn, alert_id, "bob")
        assert again.acknowledged_by == "alice"  # no second acknowledgement
        resolved = await store.resolve(conn, alert_id, "alice")
        assert resolved.state == "resolved" and resolved.resolved_by == "alice"
        with pytest.raises(store.AlertNotFoundError):
            await store.resolve(conn, alert_id, "alice")
        history = await store.list_transitions(conn, alert_id)
        assert [(t.seq, t.action, t.actor) for t in history] == [
            (1, "fired", "engine"), (2, "acknowledged", "alice"), (3, "resolved_by_hand", "alice")]
        assert history[2].from_state == "firing" and history[2].to_state == "resolved"
        assert [a.alert_id for a in await store.list_alerts(conn, open_only=True)] == []
        assert [a.alert_id for a in await store.list_alerts(conn, device_id="d1", max_grade=3)] == [alert_id]


async def test_rules_apply_bumps_version_and_replaces_a_source(database: str) -> None:
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        assert await rules.rules_version(conn) == 0
        await rules.upsert_rules(conn, [("a", "A", True, {"x": 1}), ("b", "B", True, {})],
                                 source="f.yaml", actor="cli", replace_source=True)
        version = await rules.upsert_rules(conn, [("a", "A2", True, {"x": 2})], source="f.yaml",
                                           actor="cli", replace_source=True)
        assert version == 2
        listed = await rules.list_rules(conn)
        assert [(r.rule_id, r.name, r.definition) for r in listed] == [("a", "A2", {"x": 2})]
        now = datetime.now(UTC)
        sid = await rules.create_silence(conn, {"site": ["s1"]}, now, now + timedelta(hours=1),
                                         "alice", "maintenance")
        assert [s.silence_id for s in await rules.list_silences(conn, active_at=now)] == [sid]
        assert await rules.expire_silence(conn, sid)
        assert await rules.list_silences(conn) == []


async def test_acknowledging_an_incident_acknowledges_its_members(database: str) -> None:
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        members = [await _open_alert(conn, "r1", f"d{i}") for i in range(3)]
        cur = await conn.execute(
            """INSERT INTO alert_incidents (site_id, grade, first_seen, last_seen, member_count)
               VALUES ('s1', 3, now(), now(), 3) RETURNING incident_id""")
        row = await cur.fetchone()
        assert row
        await conn.execute("UPDATE alerts SET incident_id = %s", (row[0],))
        incident = await store.acknowledge_incident(conn, row[0], "alice")
        assert incident.acknowledged and incident.acknowledged_by == "alice"
        acked = await store.list_alerts(conn, incident_id=row[0], acknowledged=True)
        assert sorted(a.alert_id for a in acked) == sorted(members)
        assert [i.incident_id for i in await store.list_incidents(conn, state="open")] == [row[0]]
