"""``group_interval`` with an injected clock: after a group's first notification, the group's
next notifications go out together, at most once per interval, then singly again."""

from __future__ import annotations

import contextlib

import psycopg
import pytest

from alerts.grouping import Grouper
from brokers.kafka import KafkaBus
from citysense.settings import CommonSettings
from storage.alerts_engine_sql import OutboxIn
from tests.alerts.harness import NS, T0, Harness, alert_settings, setup
from tests.alerts.test_engine_notifications import SECRET, delivering, reading, rules, wait_for
from tests.alerts.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.services


async def test_a_groups_later_notifications_go_out_together_once_per_group_interval(
        pipeline_settings: CommonSettings, kafka_bus: KafkaBus, database: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYSENSE_TEST_WEBHOOK_SECRET", SECRET)
    s = alert_settings(pipeline_settings, database, deliver_poll_s=0.05)
    async with WebhookReceiver() as hook:
        await setup(kafka_bus, s, rules(hook.url))
        async with Harness(kafka_bus, s, group_interval_s=300) as h:
            async def at(t_s: int, *batches: tuple[str, float]) -> None:
                h.clock.now_ns = T0 + t_s * NS
                t = T0 + t_s * NS
                await h.send([reading(d, "crack_width_mm" if d.startswith("bridge") else "pm25", t, v)
                              for d, v in batches])

            await at(0, ("air-0001", 80.0))  # the group's first notification: on its own, at once
            await at(10, ("air-0002", 80.0), ("air-0003", 160.0))  # within 5 min: one batch at 300 s
            await at(20, ("air-0001", 10.0))  # joins that batch
            await at(301, ("air-0004", 80.0))  # the 300 s batch is the interval's: next one at 600 s
            await at(900, ("air-0005", 80.0))  # a whole interval after the last send: on its own
            await at(905, ("bridge-0001", 0.5))  # another rule is another group
            await at(906, ("air-0006", 80.0))
        async with await psycopg.AsyncConnection.connect(database) as conn:
            cur = await conn.execute(
                """SELECT device_id, payload->>'kind', coalesce(payload->'idempotency_keys', to_jsonb(
                          ARRAY[idempotency_key])), round(extract(epoch FROM next_attempt_at - created_at))
                   FROM alert_outbox ORDER BY outbox_id""")
            rows = [(d, k, len(keys), int(delay)) for d, k, keys, delay in await cur.fetchall()]
        assert rows == [("rule:pm25", "alert", 1, 0), ("rule:pm25", "group", 3, 290),
                        ("rule:pm25", "group", 1, 299), ("rule:pm25", "alert", 1, 0),
                        ("rule:crack", "alert", 1, 0), ("rule:pm25", "group", 1, 294)]
        # a batch is delivered like any row: one signed POST with its notifications in order
        async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
            await conn.execute("UPDATE alert_outbox SET next_attempt_at = now()")
        async with delivering(s):
            await wait_for(lambda: len(hook.received) == 6, 20, "6 deliveries")
        batch = next(r.json for r in hook.received if r.json["kind"] == "group")
        got = [(n["device_id"], n["action"]) for n in batch["notifications"]]
        assert sorted(got[:2]) == [("air-0002", "fired"), ("air-0003", "fired")]  # (two partitions)
        assert got[2] == ("air-0001", "resolved")
        keys = [f"alert:{n['alert_id']}:{n['seq']}" for n in batch["notifications"]]
        assert batch["idempotency_keys"] == keys


async def test_a_checkpoint_that_rolls_back_does_not_count_as_a_groups_send(database: str) -> None:
    clock = [T0]
    grouper = Grouper(300, lambda: clock[0])

    def row(n: int) -> OutboxIn:
        return OutboxIn("ops", "air-0001", None, None, f"alert:{n}:1", {"rule_id": "pm25", "site_id": None})

    async with await psycopg.AsyncConnection.connect(database) as conn:
        with contextlib.suppress(RuntimeError):
            async with conn.transaction():
                await grouper.place(conn, [row(1)])
                raise RuntimeError("the checkpoint failed")
        grouper.rolled_back()
        clock[0] += 10 * NS
        async with conn.transaction():
            placed = await grouper.place(conn, [row(1), row(2)])
        grouper.committed()
    assert [(r.device_id, r.payload.get("kind"), r.idempotency_key) for r in placed] == [
        ("rule:pm25", None, "alert:1:1"), ("rule:pm25", "group", f"group:rule:pm25:{T0 + 310 * NS}")]
