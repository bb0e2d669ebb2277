"""Rules that change under a running engine: the open alerts of a removed or disabled rule are
resolved by 'system' (reason 'rule removed/disabled'); so is the open alert of a device that a
rule's new selector no longer picks."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

from alerts.rule_file import parse
from alerts.rules_db import apply_rules
from brokers.kafka import KafkaBus
from citysense.records import Reading, RecordBatch
from citysense.settings import CommonSettings
from tests.alerts.harness import T0, Harness, alert_settings, scalar, setup

pytestmark = pytest.mark.services


def rule(rule_id: str, metric: str, devices: str, enabled: bool = True) -> str:
    return f"""
  - id: {rule_id}
    name: {rule_id}
    enabled: {str(enabled).lower()}
    selector: {{device_ids: [{devices}]}}
    condition: {{type: threshold, metric: {metric}}}
    grades: {{red: 40}}
"""


BEFORE = "rules:" + rule("hot", "temperature", "air-0001") + rule("dusty", "pm25", "air-0001") + \
    rule("picky", "temperature", "air-0002")
AFTER = "rules:" + rule("hot", "temperature", "air-0001", enabled=False) + \
    rule("picky", "temperature", "air-0003")  # dusty removed, picky's selector moved


async def test_open_alerts_of_removed_disabled_and_unselected_rules_are_resolved(
        pipeline_settings: CommonSettings, kafka_bus: KafkaBus, database: str) -> None:
    s = alert_settings(pipeline_settings, database)
    await setup(kafka_bus, s, BEFORE)
    async with Harness(kafka_bus, s) as h:
        await h.send([RecordBatch("air-0001", T0, (Reading("air-0001", "temperature", T0, 45.0, T0),
                                                   Reading("air-0001", "pm25", T0, 45.0, T0))),
                      RecordBatch("air-0002", T0, (Reading("air-0002", "temperature", T0, 45.0, T0),))])
        assert await scalar(database, "SELECT count(*) FROM alerts WHERE state = 'firing'") == 3
        before = h.engine.rules_version
        async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
            await apply_rules(conn, parse(AFTER), source="test.yaml", actor="test")
        deadline = time.monotonic() + 10
        while h.engine.rules_version == before or await scalar(
                database, "SELECT count(*) FROM alerts WHERE state <> 'resolved'") or await scalar(
                database, "SELECT count(*) FROM alert_transitions WHERE published_at IS NULL"):
            assert time.monotonic() < deadline, "the open alerts were not resolved"
            await asyncio.sleep(0.05)
        assert set(h.engine.devices["air-0001"].rules) == set()  # their state is gone too
        assert set(h.engine.devices["air-0002"].rules) == set()
    async with await psycopg.AsyncConnection.connect(database) as conn:
        cur = await conn.execute(
            """SELECT a.rule_id, t.action, t.from_state, t.actor, t.reason, a.resolved_by
               FROM alert_transitions t JOIN alerts a USING (alert_id) WHERE t.seq = 2 ORDER BY 1""")
        assert await cur.fetchall() == [
            ("dusty", "resolved", "firing", "system", "rule removed/disabled", "system"),
            ("hot", "resolved", "firing", "system", "rule removed/disabled", "system"),
            ("picky", "resolved", "firing", "system", "rule no longer selects this device", "system")]
