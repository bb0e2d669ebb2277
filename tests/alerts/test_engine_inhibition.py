"""Inhibition of what a device buffered while it was offline: the readings it sends when it
comes back move its alerts (recorded, marked inhibited) without a notification for each moment
of the offline period; what still holds at the comeback is notified once."""

from __future__ import annotations

import psycopg
import pytest

from brokers.kafka import KafkaBus
from citysense.records import Reading, RecordBatch
from citysense.settings import CommonSettings
from tests.alerts.harness import NS, T0, Harness, alert_settings, register, setup
from tests.alerts.test_engine_notifications import rules

pytestmark = pytest.mark.services
SILENCE = """  - id: air-offline
    name: air station silent
    selector: {kind: [air]}
    condition: {type: silence, grace: 10s, grace_ratio: 0}
    repeat_interval: 0
"""


async def test_buffered_readings_of_an_offline_device_do_not_notify(
        pipeline_settings: CommonSettings, kafka_bus: KafkaBus, database: str) -> None:
    s = alert_settings(pipeline_settings, database)
    await setup(kafka_bus, s, rules("http://127.0.0.1:9/hook") + SILENCE)
    await register(database, [("air-0001", "air", None, 60.0), ("air-0002", "air", None, 60.0)])

    def uplink(device: str, received_s: int, *values: tuple[int, float]) -> RecordBatch:
        return RecordBatch(device, T0 + received_s * NS, tuple(
            Reading(device, "pm25", T0 + t * NS, v, T0 + received_s * NS) for t, v in values))

    async with Harness(kafka_bus, s) as h:
        await h.send([uplink("air-0001", 0, (0, 10.0)), uplink("air-0002", 0, (0, 10.0))])
        await h.advance(T0 + 70 * NS)  # late
        await h.advance(T0 + 140 * NS)  # offline
        h.clock.now_ns = T0 + 300 * NS
        # back, with what it buffered: a crossing at 100 s, clear at 200 s, red at 250 s; red now
        await h.send([uplink("air-0001", 300, (100, 80.0), (200, 10.0), (250, 160.0), (300, 170.0))])
        # also back, with no backlog: a crossing at the comeback itself notifies as usual
        await h.send([uplink("air-0002", 300, (300, 80.0))])
    async with await psycopg.AsyncConnection.connect(database) as conn:
        cur = await conn.execute(
            """SELECT a.device_id, t.action, t.grade, (extract(epoch FROM t.device_time) - %s)::int,
                      a.suppressed
               FROM alert_transitions t JOIN alerts a USING (alert_id) WHERE a.rule_id = 'pm25'
               ORDER BY t.transition_id""", (T0 // NS,))
        assert await cur.fetchall() == [
            ("air-0001", "fired", 3, 100, "inhibited"), ("air-0001", "resolved", 3, 200, "inhibited"),
            ("air-0001", "fired", 1, 250, "inhibited"), ("air-0001", "repeated", 1, 300, "inhibited"),
            ("air-0002", "fired", 3, 300, None)]
        cur = await conn.execute("SELECT device_id, payload->>'action', payload->>'grade' FROM alert_outbox"
                                 " ORDER BY outbox_id")
        assert await cur.fetchall() == [("air-0001", "repeated", "1"), ("air-0002", "fired", "3")]
