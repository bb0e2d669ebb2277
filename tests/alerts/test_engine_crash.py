"""SIGKILL the engine inside a ``for`` window and again while alerts fire: after the
restarts every transition is recorded exactly once (the same list an uninterrupted pure
evaluation gives) and the webhook gets one delivery per idempotency key."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest

from alerts.evaluate import evaluate_batch
from alerts.lifecycle import NS, Compiled
from alerts.rule_file import parse
from alerts.state import DeviceState
from brokers.kafka import KafkaBus
from citysense.records import Reading, RecordBatch, encode
from citysense.settings import CommonSettings
from tests.alerts.harness import MIN, T0, alert_settings, scalar, setup, transitions
from tests.alerts.test_engine_notifications import SECRET, delivering
from tests.alerts.webhook_receiver import WebhookReceiver

pytestmark = [pytest.mark.services, pytest.mark.slow]

DEVICES, MINUTES = 50, 60
PATTERN = [0.1] * 3 + [0.35] * 8 + [0.6] * 4 + [0.2] * 5  # pending, fired (for 5m), escalated, resolved


def rules(url: str) -> str:
    return f"""
receivers:
  - {{name: ops, url: "{url}", secret_env: CITYSENSE_TEST_WEBHOOK_SECRET}}
rules:
  - id: crack
    name: crack width
    selector: {{kind: [bridge]}}
    condition: {{type: threshold, metric: crack_width_mm}}
    grades: {{yellow: 0.3, orange: 0.5}}
    clear: 0.25
    for: 5m
    receivers: [ops]
"""


def stream() -> list[RecordBatch]:
    out = []
    for m in range(MINUTES):
        for d in range(DEVICES):
            device, t = f"bridge-{d:04d}", T0 + m * MIN
            value = PATTERN[(m + d) % len(PATTERN)]
            out.append(RecordBatch(device, t, (Reading(device, "crack_width_mm", t, value, t),)))
    return out


def expected(batches: list[RecordBatch], rules_yaml: str) -> list[tuple[str, str, int, int]]:
    c = Compiled.of(parse(rules_yaml).rules[0])
    states: dict[str, DeviceState] = {}
    out = []
    for b in batches:
        ops, _ = evaluate_batch([c], b, states.setdefault(b.device_id, DeviceState()), 1800 * NS, 100)
        out += [(op.device_id, op.action, op.grade, op.t_ns) for op in ops]
    return out


def start(s: CommonSettings, database: str, group: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CITYSENSE_DATABASE_URL": database,
           "CITYSENSE_KAFKA_BOOTSTRAP": s.kafka_bootstrap or "",
           "CITYSENSE_TOPIC_RAW": s.topic_raw, "CITYSENSE_TOPIC_READINGS": s.topic_readings,
           "CITYSENSE_TOPIC_DLQ": s.topic_dlq, "CITYSENSE_TOPIC_ALERTS": s.topic_alerts,
           "CITYSENSE_READINGS_PARTITIONS": str(s.readings_partitions), "CITYSENSE_ALERTS_GROUP": group,
           "CITYSENSE_ALERTS_MAX_RECORDS": "20", "CITYSENSE_ALERTS_CHECKPOINT_INTERVAL_S": "0",
           "CITYSENSE_ALERTS_GROUP_WAIT_S": "0",
           "CITYSENSE_ALERTS_GROUP_INTERVAL_S": "0"}
    env.pop("CITYSENSE_METRICS_PORT", None)
    return subprocess.Popen([sys.executable, "-m", "citysense", "alerts", "run"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def count(database: str) -> int:
    return int(await scalar(database, "SELECT count(*) FROM alert_transitions"))


async def wait_count(database: str, at_least: int, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while await count(database) < at_least:
        if proc.poll() is not None:
            raise AssertionError(f"engine exited {proc.returncode}: {proc.stderr.read().decode()[-3000:]}"
                                 if proc.stderr else "engine exited")
        assert time.monotonic() < deadline, f"fewer than {at_least} transitions after {timeout_s}s"
        await asyncio.sleep(0.02)


async def test_sigkill_in_a_for_window_and_while_firing_loses_and_repeats_nothing(
        pipeline_settings: CommonSettings, kafka_bus: KafkaBus, database: str, unique: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYSENSE_TEST_WEBHOOK_SECRET", SECRET)
    s = alert_settings(pipeline_settings, database, deliver_poll_s=0.05)
    batches = stream()
    async with WebhookReceiver() as hook:
        yaml_rules = rules(hook.url)
        want = expected(batches, yaml_rules)
        await setup(kafka_bus, s, yaml_rules)
        producer = kafka_bus.producer()
        await producer.start()
        await producer.send_batch(s.topic_readings, [(b.device_id.encode(), encode(b)) for b in batches])
        await producer.stop()
        group = f"test-alerts-{unique}"
        async with delivering(s):
            for kill_at in (len(want) // 6, len(want) // 2):  # early: pendings open; later: alerts firing
                proc = start(pipeline_settings, database, group)
                await wait_count(database, kill_at, proc, 90)
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=10)
                assert await count(database) < len(want), "the kill came after the whole stream"
            proc = start(pipeline_settings, database, group)
            try:
                await wait_count(database, len(want), proc, 120)
                await asyncio.sleep(2.0)  # anything repeated would show up now
                assert await count(database) == len(want)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
            notified = sum(1 for _, a, _, _ in want if a in ("fired", "escalated", "resolved"))
            deadline = time.monotonic() + 30
            while len({n.headers["idempotency-key"] for n in hook.received}) < notified:
                assert time.monotonic() < deadline, "webhook deliveries missing"
                await asyncio.sleep(0.1)
    got = [(d, a, g, t) for _, d, a, g, _, t in await transitions(database)]
    assert sorted(got) == sorted(want)
    for device in {w[0] for w in want}:  # and in order per device
        assert [x for x in got if x[0] == device] == [x for x in want if x[0] == device]
    keys = [n.headers["idempotency-key"] for n in hook.received]
    assert len(set(keys)) == notified and len(keys) == notified
