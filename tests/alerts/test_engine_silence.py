"""Silence detection on the deadline heap, with the clock injected: a 6-hour PSM meter,
a charger heartbeating every 60 s, a registered device that never reports, a device
that comes back."""

from __future__ import annotations

import psycopg
import pytest

from brokers.kafka import KafkaBus
from citysense.records import Health, Reading, RecordBatch
from citysense.settings import CommonSettings
from storage import alerts_store
from tests.alerts.harness import NS, T0, Harness, alert_settings, register, setup, transitions

pytestmark = pytest.mark.services

RULES = """
rules:
  - id: meter-offline
    name: meter silent
    selector: {kind: [meter]}
    condition: {type: silence, grace: 10m, grace_ratio: 0}
    repeat_interval: 0  # no reminders here (see the repeat test below)
  - id: charger-offline
    name: charger heartbeat missing
    selector: {kind: [charger]}
    condition: {type: silence, grace: 10s, grace_ratio: 0}
    repeat_interval: 0
"""
H = 3600 * NS


def meter(t: int) -> RecordBatch:
    return RecordBatch("meter-0001", t, readings=(Reading("meter-0001", "water_m3", t, 1.0, t),))


async def test_late_then_offline_then_back(pipeline_settings: CommonSettings, kafka_bus: KafkaBus,
                                           database: str) -> None:
    s = alert_settings(pipeline_settings, database)
    await setup(kafka_bus, s, RULES)
    await register(database, [("meter-0001", "meter", None, 21600.0), ("meter-0002", "meter", None, 21600.0)])
    async with Harness(kafka_bus, s) as h:
        await h.send([meter(T0), RecordBatch("charger-0001", T0, health=(Health("charger-0001", T0),))])

        async def seen() -> list[tuple[str, str, int, float]]:
            return [(d, a, g, (t - T0) / NS) for _, d, a, g, _, t in await transitions(database)]

        await h.advance(T0 + 69 * NS)
        assert await seen() == []
        await h.advance(T0 + 70 * NS)  # interval 60 s + grace 10 s
        await h.advance(T0 + 139 * NS)
        await h.advance(T0 + 140 * NS)  # twice that: offline, within 2.5 min of the last heartbeat
        assert await seen() == [("charger-0001", "fired", 3, 70.0), ("charger-0001", "escalated", 2, 140.0)]
        await h.advance(T0 + 6 * H - 60 * NS)  # 5 h 59 min: a 6-hour PSM meter is not late
        assert [x for x in await seen() if x[0].startswith("meter")] == []
        await h.advance(T0 + 6 * H + 600 * NS)  # interval + grace: late, and the silent one is found
        await h.advance(T0 + 12 * H + 1200 * NS)  # twice that: offline
        back = T0 + 13 * H
        await h.send([meter(back)])
        meters = [x for x in await seen() if x[0].startswith("meter")]
        assert sorted(meters) == sorted([
            ("meter-0001", "fired", 3, 6 * 3600 + 600.0), ("meter-0002", "fired", 3, 6 * 3600 + 600.0),
            ("meter-0001", "escalated", 2, 12 * 3600 + 1200.0),
            ("meter-0002", "escalated", 2, 12 * 3600 + 1200.0),
            ("meter-0001", "resolved", 2, 13 * 3600.0)])
        assert len(h.engine.heap) <= 3  # one live deadline per watched device, no sweep


REPEAT = """
rules:
  - id: hot
    name: hot
    selector: {kind: [air]}
    condition: {type: threshold, metric: temperature}
    grades: {red: 40}
    repeat_interval: 4h
"""


async def test_a_firing_alert_is_notified_again_every_repeat_interval(
        pipeline_settings: CommonSettings, kafka_bus: KafkaBus, database: str) -> None:
    s = alert_settings(pipeline_settings, database)
    await setup(kafka_bus, s, REPEAT)
    async with Harness(kafka_bus, s) as h:
        await h.send([RecordBatch("air-0001", T0, (Reading("air-0001", "temperature", T0, 45.0, T0),))])
        await h.advance(T0 + 4 * H - NS)
        await h.advance(T0 + 4 * H)
        await h.advance(T0 + 8 * H)
        t = T0 + 8 * H + 60 * NS
        await h.send([RecordBatch("air-0001", t, (Reading("air-0001", "temperature", t, 20.0, t),))])
        await h.advance(T0 + 13 * H)  # resolved: no more reminders
    got = [(a, (tn - T0) // H) for _, _, a, _, _, tn in await transitions(database)]
    assert got == [("fired", 0), ("repeated", 4), ("repeated", 8), ("resolved", 8)]


async def test_a_hand_resolved_alert_whose_condition_holds_reopens_at_the_next_reminder(
        pipeline_settings: CommonSettings, kafka_bus: KafkaBus, database: str) -> None:
    s = alert_settings(pipeline_settings, database)
    await setup(kafka_bus, s, REPEAT)
    async with Harness(kafka_bus, s) as h:
        await h.send([RecordBatch("air-0001", T0, (Reading("air-0001", "temperature", T0, 45.0, T0),))])
        async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
            first = (await alerts_store.list_alerts(conn))[0].alert_id
            await alerts_store.resolve(conn, first, "alice", "looks fine to me")
        await h.advance(T0 + 4 * H)
    got = [(a, act, reason) for a, _, act, _, _, _, reason in await history(database)]
    assert got[:2] == [(first, "fired", ""), (first, "resolved_by_hand", "looks fine to me")]
    assert got[2][1:] == ("fired", "reopened: the condition still holds after a hand-resolve")
    assert got[2][0] != first


async def history(database: str) -> list[tuple[int, str, str, int, float | None, int, str]]:
    async with await psycopg.AsyncConnection.connect(database) as conn:
        cur = await conn.execute("""SELECT t.alert_id, a.device_id, t.action, t.grade, t.value, 0, t.reason
                                    FROM alert_transitions t JOIN alerts a USING (alert_id)
                                    ORDER BY t.transition_id""")
        return list(await cur.fetchall())
