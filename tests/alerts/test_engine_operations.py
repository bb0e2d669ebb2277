"""Operating the engine: rules reload without a restart, an operator's silence holds
notifications back (the alert is still recorded), ``citysense rules apply`` is all or
nothing, an offline device inhibits its own data rules' notifications."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from alerts.directory import DeviceInfo
from alerts.lifecycle import Compiled, Op
from alerts.recorder import Recorder
from alerts.rule_file import parse
from alerts.rules_db import apply_rules
from alerts.state import FIRING, DeviceState, RuleState
from brokers.kafka import KafkaBus
from citysense.records import Reading, RecordBatch
from citysense.settings import CommonSettings
from storage import alert_rules_store
from tests.alerts.harness import NS, T0, Harness, alert_settings, scalar, setup
from tests.alerts.test_engine_notifications import SECRET, rules

pytestmark = pytest.mark.services
EXTRA = """
  - id: hot
    name: hot
    selector: {kind: [air]}
    condition: {type: threshold, metric: temperature}
    grades: {red: 40}
    receivers: [ops]
"""


async def test_rules_reload_and_silences_apply_without_restart(
        pipeline_settings: CommonSettings, kafka_bus: KafkaBus, database: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYSENSE_TEST_WEBHOOK_SECRET", SECRET)
    s = alert_settings(pipeline_settings, database)
    await setup(kafka_bus, s, rules("http://127.0.0.1:9/hook"))
    async with Harness(kafka_bus, s) as h:
        before = h.engine.rules_version
        async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
            await apply_rules(conn, parse(rules("http://127.0.0.1:9/hook") + EXTRA), source="test.yaml",
                              actor="test")
            now = datetime.now(UTC)
            await alert_rules_store.create_silence(conn, {"device_ids": ["air-0002"]}, now - timedelta(1),
                                                   now + timedelta(hours=1), "alice", "sensor being serviced")
        deadline = time.monotonic() + 10
        while h.engine.rules_version < before + 2:
            assert time.monotonic() < deadline, "the engine did not reload"
            await asyncio.sleep(0.05)
        await h.send([RecordBatch(d, T0, (Reading(d, "temperature", T0, 45.0, T0),))
                      for d in ("air-0001", "air-0002")])
    assert await scalar(database, "SELECT count(*) FROM alerts WHERE rule_id = 'hot'") == 2
    assert await scalar(database, "SELECT suppressed FROM alerts WHERE device_id = 'air-0002'") == "silenced"
    assert await scalar(database, "SELECT count(*) FROM alert_outbox WHERE device_id = 'air-0002'") == 0
    assert await scalar(database, "SELECT count(*) FROM alert_outbox WHERE device_id = 'air-0001'") == 1


def test_rules_apply_is_all_or_nothing(database: str, tmp_path: Path) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(rules("http://127.0.0.1:9/hook"))
    bad.write_text(rules("http://127.0.0.1:9/hook") + EXTRA.replace("temperature", "temprature"))
    env = {**os.environ, "CITYSENSE_DATABASE_URL": database}
    cli = [sys.executable, "-m", "citysense", "rules"]
    assert subprocess.run([*cli, "apply", str(good)], env=env, check=False).returncode == 0
    refused = subprocess.run([*cli, "apply", str(bad)], env=env, capture_output=True, text=True, check=False)
    assert refused.returncode == 1 and "line 22" in refused.stderr and "temprature" in refused.stderr
    listed = subprocess.run([*cli, "list"], env=env, capture_output=True, text=True, check=True).stdout
    assert [line.split()[0] for line in listed.splitlines()] == ["crack", "pm25"]


def test_an_offline_device_inhibits_its_data_rules_notifications() -> None:
    data = Compiled.of(parse(rules("http://x")).rules[1])
    silence = Compiled.of(parse("rules: [{id: silent, name: s, condition: {type: silence}}]").rules[0])
    ds = DeviceState(rules={"silent": RuleState(phase=FIRING, grade=2)})
    recorder = Recorder(lambda d: DeviceInfo(d, "air", "air"), {"air-0001": ds}.get, list,
                        incident_window_s=60, group_wait_s=0)
    recorder.silence_rule_ids = frozenset({"silent"})
    op = Op(data, "air-0001", RuleState(), "fired", "resolved", "firing", 3, 80.0, T0)
    assert recorder._suppressed(op, DeviceInfo("air-0001", "air", "air")) == "inhibited"
    other = Op(data, "air-0002", RuleState(), "fired", "resolved", "firing", 3, 80.0, T0)
    assert recorder._suppressed(other, DeviceInfo("air-0002", "air", "air")) is None  # same device only
    own = Op(silence, "air-0001", RuleState(), "escalated", "firing", "firing", 2, 1.0, T0)
    assert recorder._suppressed(own, DeviceInfo("air-0001", "air", "air")) is None


async def test_a_rules_rate_limit_holds_back_notifications_beyond_it(
        pipeline_settings: CommonSettings, kafka_bus: KafkaBus, database: str) -> None:
    s = alert_settings(pipeline_settings, database)
    grades = "    grades: {yellow: 75, red: 150}\n"
    limit = "    rate_limit: {count: 2, per: 1h}\n"
    limited = rules("http://127.0.0.1:9/hook").replace(grades, grades + limit)
    await setup(kafka_bus, s, limited)
    async with Harness(kafka_bus, s) as h:
        await h.send([RecordBatch(f"air-{i:04d}", T0, (Reading(f"air-{i:04d}", "pm25", T0, 80.0, T0),))
                      for i in range(5)])
    assert await scalar(database, "SELECT count(*) FROM alerts WHERE state = 'firing'") == 5
    assert await scalar(database, "SELECT count(*) FROM alert_outbox") == 2
    assert await scalar(database, "SELECT count(*) FROM alerts WHERE suppressed = 'rate_limited'") == 3


async def test_rate_limit_counters_survive_a_restart(
        pipeline_settings: CommonSettings, kafka_bus: KafkaBus, database: str) -> None:
    s = alert_settings(pipeline_settings, database)
    grades = "    grades: {yellow: 75, red: 150}\n"
    limit = "    rate_limit: {count: 2, per: 1h}\n"
    limited = rules("http://127.0.0.1:9/hook").replace(grades, grades + limit)
    await setup(kafka_bus, s, limited)

    def fire(i: int, t: int) -> RecordBatch:
        return RecordBatch(f"air-{i:04d}", t, (Reading(f"air-{i:04d}", "pm25", t, 80.0, t),))

    async with Harness(kafka_bus, s) as h:
        await h.send([fire(i, T0) for i in range(2)])
    assert await scalar(database, "SELECT count(*) FROM alert_outbox") == 2
    async with Harness(kafka_bus, s) as h:  # a new engine: the hour's two notifications still count
        h.clock.now_ns = T0 + 59 * 60 * NS
        await h.send([fire(i, T0) for i in range(2, 4)])
        assert await scalar(database, "SELECT count(*) FROM alert_outbox") == 2
        h.clock.now_ns = T0 + 61 * 60 * NS  # the window has passed
        await h.send([fire(4, T0)])
    assert await scalar(database, "SELECT count(*) FROM alert_outbox") == 3
    assert await scalar(database, "SELECT count(*) FROM alerts WHERE suppressed = 'rate_limited'") == 2
