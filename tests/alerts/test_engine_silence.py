"""Silence detection on the deadline heap, with the clock injected: a 6-hour PSM meter,
a charger heartbeating at the OCPP interval under the default pack's rule, a registered device
that never reports, a device that comes back."""

from __future__ import annotations

import psycopg
import pytest
import yaml

from alerts.cli import DEFAULT_RULES
from brokers.kafka import KafkaBus
from citysense.records import Health, Reading, RecordBatch
from citysense.settings import CommonSettings
from ingest.profiles import PROFILES
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
"""
H = 3600 * NS
HEARTBEAT_S = int(PROFILES["charger"].report_interval_s)  # what simulators/charger.py sends


def with_default_pack_rule(rules_yaml: str, rule_id: str) -> str:
    """``rules_yaml`` plus one rule of alerts/rules/default.yaml (no receivers, no reminders)."""
    rule = next(r for r in yaml.safe_load(DEFAULT_RULES.read_text())["rules"] if r["id"] == rule_id)
    rule.pop("receivers", None)
    rules = [*yaml.safe_load(rules_yaml)["rules"], {**rule, "repeat_interval": 0}]
    return yaml.safe_dump({"rules": rules}, allow_unicode=True)


def heartbeat(t: int) -> RecordBatch:
    return RecordBatch("charger-0001", t, health=(Health("charger-0001", t),))


def meter(t: int) -> RecordBatch:
    return RecordBatch("meter-0001", t, readings=(Reading("meter-0001", "water_m3", t, 1.0, t),))


async def test_late_then_offline_then_back(pipeline_settings: CommonSettings, kafka_bus: KafkaBus,
                                           database: str) -> None:
    s = alert_settings(pipeline_settings, database)
    await setup(kafka_bus, s, with_default_pack_rule(RULES, "charger-offline"))
    await register(database, [("meter-0001", "meter", None, 21600.0), ("meter-0002", "meter", None, 21600.0)])
    async with Harness(kafka_bus, s) as h:
        await h.send([meter(T0), heartbeat(T0)])

        async def seen() -> list[tuple[str, str, int, float]]:
            return [(d, a, g, (t - T0) / NS) for _, d, a, g, _, t in await transitions(database)]

        # A healthy idle pile: a heartbeat every HeartbeatInterval (and one lost) raises nothing.
        last = T0
        for t in (T0 + HEARTBEAT_S * NS, T0 + 3 * HEARTBEAT_S * NS):
            await h.advance(t - NS)
            await h.send([heartbeat(t)])
            last = t
        await h.advance(last + 629 * NS)
        assert await seen() == []
        # Then it goes silent: late after two missed heartbeats (300 s + 1.1 x 300 s), offline at
        # twice that.
        await h.advance(last + 630 * NS)
        await h.advance(last + 1259 * NS)
        await h.advance(last + 1260 * NS)
        t = (last - T0) / NS
        assert await seen() == [("charger-0001", "fired", 3, t + 630),
                                ("charger-0001", "escalated", 2, t + 1260)]
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
