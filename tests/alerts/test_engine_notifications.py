"""Notifications end to end (engine -> outbox -> delivery worker -> a local webhook):
site incidents, flapping, a receiver that is down for a while, signatures."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import psycopg
import pytest

from alerts.delivery import Delivery, signature
from alerts.settings import AlertSettings
from brokers.kafka import KafkaBus
from citysense.records import Reading, RecordBatch
from citysense.settings import CommonSettings
from storage.db import open_pool
from tests.alerts.harness import MIN, T0, Harness, alert_settings, register, scalar, setup
from tests.alerts.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.services
SECRET = "test-secret-not-real"


def rules(url: str) -> str:
    return f"""
receivers:
  - {{name: ops, url: "{url}", secret_env: CITYSENSE_TEST_WEBHOOK_SECRET}}
rules:
  - id: crack
    name: crack width
    selector: {{kind: [bridge]}}
    condition: {{type: threshold, metric: crack_width_mm}}
    grades: {{yellow: 0.3, red: 1.0}}
    clear: 0.25
    receivers: [ops]
  - id: pm25
    name: pm2.5
    selector: {{kind: [air]}}
    condition: {{type: threshold, metric: pm25}}
    grades: {{yellow: 75, red: 150}}
    receivers: [ops]
"""


def reading(device: str, metric: str, t: int, v: float) -> RecordBatch:
    return RecordBatch(device, t, (Reading(device, metric, t, v, t),))


@contextlib.asynccontextmanager
async def delivering(s: AlertSettings) -> AsyncIterator[Delivery]:
    assert s.database_url is not None
    pool = await open_pool(s.database_url.get_secret_value(), max_size=2)
    delivery = Delivery(pool, s)
    task = asyncio.create_task(delivery.run())
    try:
        yield delivery
    finally:
        delivery.request_stop()
        await asyncio.wait_for(task, 30)
        await pool.close()


async def wait_for(predicate: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_forty_sensors_on_one_bridge_are_one_incident_and_one_notification(
        pipeline_settings: CommonSettings, kafka_bus: KafkaBus, database: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYSENSE_TEST_WEBHOOK_SECRET", SECRET)
    s = alert_settings(pipeline_settings, database, deliver_poll_s=0.05)
    async with WebhookReceiver() as hook:
        await setup(kafka_bus, s, rules(hook.url))
        devices = [f"bridge-{i:04d}" for i in range(40)]
        await register(database, [(d, "bridge", "qujiang-4", 60.0) for d in devices])
        async with Harness(kafka_bus, s, group_wait_s=1.0) as h, delivering(s):
            await h.send([reading(d, "crack_width_mm", T0 + i * 1_000_000_000, 0.35)
                          for i, d in enumerate(devices)])
            await wait_for(lambda: hook.received, 20, "the incident notification")
            await asyncio.sleep(1.0)  # nothing else arrives
    assert len(hook.received) == 1
    note = hook.received[0]
    body = note.json
    assert body["kind"] == "incident" and body["action"] == "incident_opened"
    assert body["member_count"] == 40 and len(body["members"]) == 40
    stamp = note.headers["x-citysense-timestamp"]
    assert note.headers["x-citysense-signature"] == signature(SECRET, stamp, note.body)
    assert note.headers["idempotency-key"] == f"incident:{body['incident_id']}:opened"
    assert await scalar(database, "SELECT count(*) FROM alert_incidents") == 1
    assert await scalar(database, "SELECT count(*) FROM alerts WHERE incident_id IS NOT NULL") == 40


async def test_oscillating_value_gives_only_the_flapping_notification(
        pipeline_settings: CommonSettings, kafka_bus: KafkaBus, database: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYSENSE_TEST_WEBHOOK_SECRET", SECRET)
    s = alert_settings(pipeline_settings, database, deliver_poll_s=0.05)
    async with WebhookReceiver() as hook:
        await setup(kafka_bus, s, rules(hook.url))
        async with Harness(kafka_bus, s, group_wait_s=2.0) as h, delivering(s):
            await h.send([reading("air-0001", "pm25", T0 + i * MIN, 80.0 if i % 2 == 0 else 70.0)
                          for i in range(30)])
            await asyncio.sleep(3.5)  # past group_wait: whatever was going to be sent is sent
    transitions = await scalar(database, "SELECT count(*) FROM alert_transitions")
    assert transitions == 30  # every crossing is recorded...
    assert [n.json["action"] for n in hook.received] == ["flapping"]  # ...one notification says so


async def test_receiver_down_then_back_gets_everything_in_order_per_device(
        pipeline_settings: CommonSettings, kafka_bus: KafkaBus, database: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYSENSE_TEST_WEBHOOK_SECRET", SECRET)
    s = alert_settings(pipeline_settings, database, deliver_poll_s=0.05, deliver_backoff_base_s=0.1,
                       deliver_backoff_max_s=0.5, deliver_max_attempts=100)
    async with WebhookReceiver(status=503) as hook:
        await setup(kafka_bus, s, rules(hook.url))
        values = [80.0, 160.0, 90.0, 10.0]  # fired yellow, escalated red, deescalated, resolved
        devices = [f"air-{i:04d}" for i in range(5)]
        async with Harness(kafka_bus, s) as h, delivering(s):
            await h.send([reading(d, "pm25", T0 + k * MIN, v) for k, v in enumerate(values) for d in devices])
            await asyncio.sleep(4.0)  # the receiver is down (503) for 4 s
            assert hook.received == [] and hook.attempts > 0
            hook.status = 200
            await wait_for(lambda: len(hook.received) == 20, 30, "every notification, receiver back")
        parked = await scalar(database, "SELECT count(*) FROM alert_outbox WHERE state <> 'delivered'")
    assert parked == 0
    for d in devices:
        actions = [n.json["action"] for n in hook.received if n.json["device_id"] == d]
        assert actions == ["fired", "escalated", "deescalated", "resolved"]
    keys = [n.headers["idempotency-key"] for n in hook.received]
    assert len(set(keys)) == len(keys)


async def test_4xx_is_parked_with_its_reason_and_5xx_gives_up_after_bounded_attempts(
        pipeline_settings: CommonSettings, kafka_bus: KafkaBus, database: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYSENSE_TEST_WEBHOOK_SECRET", SECRET)
    s = alert_settings(pipeline_settings, database, deliver_poll_s=0.05, deliver_backoff_base_s=0.05,
                       deliver_backoff_max_s=0.1, deliver_max_attempts=3)
    async with WebhookReceiver(status=410) as hook:
        await setup(kafka_bus, s, rules(hook.url))
        async with Harness(kafka_bus, s) as h, delivering(s):
            await h.send([reading("air-0001", "pm25", T0, 80.0)])
            await wait_for(lambda: hook.attempts >= 1, 10, "the first attempt")
            hook.status = 503
            await h.send([reading("air-0002", "pm25", T0, 80.0)])
            await wait_for(lambda: hook.attempts >= 4, 10, "three attempts at the second")
            await asyncio.sleep(0.5)
    async with await psycopg.AsyncConnection.connect(database) as conn:
        cur = await conn.execute("SELECT device_id, state, attempts, last_error FROM alert_outbox ORDER BY 1")
        rows = await cur.fetchall()
    assert [(d, st, n) for d, st, n, _ in rows] == [("air-0001", "parked", 1), ("air-0002", "parked", 3)]
    assert rows[0][3].startswith("HTTP 410") and rows[1][3].startswith("gave up after 3 attempts: HTTP 503")
    assert hook.attempts == 4
