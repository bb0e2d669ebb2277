"""Issue 12: a bad-input corpus of 47 kinds, interleaved with good uplinks, through the real pipeline.

Mosquitto -> bridge -> Kafka -> normaliser -> writer -> PostgreSQL, one run for the
whole corpus: every bad uplink ends in the dead-letter topic with its reason, or is
refused by the broker (a device publishing on another device's topic); every good
uplink is stored exactly once; the hostile-but-valid ones are stored verbatim; no
stage stops. The same corpus runs over the normaliser alone first (no services).
"""

from __future__ import annotations

import time
from collections import Counter

import psycopg
import pytest

from brokers.base import Message
from brokers.exceptions import BrokerError
from brokers.kafka import KafkaBus
from brokers.mqtt import MqttClient, MqttConfig
from citysense.credentials import device_password
from citysense.records import Envelope, encode
from citysense.settings import CommonSettings
from ingest.dedupe import Deduper
from ingest.dlq import original_envelope, scan
from ingest.normaliser import Normalise
from tests.conftest import ServiceEnv
from tests.faults.corpus import Case, Stored, corpus, good
from tests.integration.pipeline import running_pipeline, wait_until

TAIL = 20  # good uplinks after the whole corpus: the stages still run


def test_the_corpus_over_the_normaliser_alone() -> None:
    now = time.time_ns()
    normalise, dedupe = Normalise(), Deduper(1000)
    cases = corpus("unit0", now)
    assert len({c.name for c in cases}) == len(cases) >= 30
    for i, c in enumerate(cases):
        if c.refused_by_broker:
            continue
        env = Envelope(c.topic, c.device, now, c.payload)
        out = normalise(Message("raw", 0, i, c.device.encode(), encode(env), 0), dedupe)
        got = out.dead.reason_code if out.dead is not None else None
        readings = out.batch.readings if out.batch is not None else ()
        stored = frozenset((r.device_id, r.metric, r.value) for r in readings)
        assert (got, stored) == (c.reason, c.stores), c.name


async def _rows(database: str, token: str) -> list[tuple[str, str, int, float]]:
    async with await psycopg.AsyncConnection.connect(database) as conn:
        cur = await conn.execute(
            "SELECT device_id, metric, (extract(epoch FROM time) * 1000000)::bigint, value FROM readings"
            " WHERE strpos(device_id, %s) > 0", (token,))
        return [(d, m, int(t), float(v)) for d, m, t, v in await cur.fetchall()]


@pytest.mark.services
async def test_the_corpus_through_the_real_pipeline(
    service_env: ServiceEnv, pipeline_settings: CommonSettings, database: str, unique: str,
    kafka_bus: KafkaBus,
) -> None:
    token = f"c{unique[:8]}"
    now = time.time_ns()
    cases = corpus(token, now)
    goods = [good(token, i, now) for i in range(len(cases) + TAIL)]
    # The load generator's login may publish any device's uplink topic (its own password once
    # the broker separates it from the bridge's, else the shared one).
    loadgen_password = service_env.raw.get("CITYSENSE_MQTT_LOADGEN_PASSWORD") or service_env.bridge_password
    loadgen = MqttClient(MqttConfig(url=service_env.mqtt_url, username="citysense-loadgen",
                                    password=loadgen_password))
    # A device's client id is its id (the broker may insist); the highest of the broker's default
    # devices, which the other tests' fleets (air-0000 upwards) reach last.
    login = next(c.via_device_login for c in cases if c.via_device_login)
    device = MqttClient(MqttConfig(url=service_env.mqtt_url, username=login, client_id=login,
                                   password=device_password(service_env.device_secret, login)))
    refused: dict[str, str] = {}
    async with running_pipeline(
        pipeline_settings, bridge_user=service_env.bridge_username,
        bridge_password=service_env.bridge_password, database_url=database, share_group=f"test-{unique}",
    ) as pipeline:
        await loadgen.start()
        await device.start()
        try:
            for i, (kind, dev, payload, _, _) in enumerate(goods):
                await loadgen.publish(f"devices/{kind}/{dev}/up", payload, 1)  # acknowledged: stored
                if i < len(cases):
                    c = cases[i]
                    client = device if c.via_device_login else loadgen
                    try:
                        await client.publish(c.topic, c.payload, 1)
                    except BrokerError as exc:
                        refused[c.name] = str(exc)
        finally:
            await loadgen.stop()
            await device.stop()

        expected: Stored = frozenset().union(*(g[3] for g in goods), *(c.stores for c in cases))
        dead_cases = {c.topic: c for c in cases if c.reason is not None}

        async def all_stored() -> bool:
            return len(await _rows(database, token)) >= len(expected)

        await wait_until(all_stored, 90, f"{len(expected)} readings of this run in PostgreSQL")
        letters = []
        for _ in range(30):
            found = (await scan(kafka_bus, pipeline_settings.topic_dlq, idle_ms=1500)).letters
            letters = [(d, env) for d in found if (env := original_envelope(d)) is not None
                       and token in env.mqtt_topic]
            if len(letters) >= len(dead_cases):
                break
        # the TAIL good uplinks published after the whole corpus are stored: no stage stopped
        # (and leaving the context raises what any stage raised)
        assert pipeline.writer is not None and pipeline.normaliser.counters.internal_errors == 0
        rows = await _rows(database, token)
        async with await psycopg.AsyncConnection.connect(database) as conn:
            tables = await (await conn.execute("SELECT to_regclass('readings') IS NOT NULL")).fetchone()
            infos = await (await conn.execute(
                "SELECT info FROM charger_status WHERE strpos(device_id, %s) > 0", (token,))).fetchall()
            seen = await (await conn.execute(
                "SELECT count(*) FROM device_health WHERE strpos(device_id, %s) > 0", (token,))).fetchone()

    by_topic = Counter(env.mqtt_topic for _, env in letters)
    got_reasons = {env.mqtt_topic: d.reason_code for d, env in letters}
    stages = Counter(d.stage for d, _ in letters)
    stored = Counter((d, m, v) for d, m, _, v in rows)
    good_times = {(dev, m, t // 1000) for _, dev, _, st, t in goods for (_, m, _) in st}
    _print_accounting(cases, goods, refused, got_reasons, rows, expected)

    assert {c.name for c in cases if c.refused_by_broker} == set(refused)
    assert all("0x87" in text for text in refused.values())  # MQTT 5 "not authorized"
    assert set(stored) == expected and all(n == 1 for n in stored.values())  # each stored once
    assert len(rows) == len(expected)
    assert good_times <= {(d, m, t) for d, m, t, _ in rows}  # good uplinks at their own times
    assert set(by_topic) == set(dead_cases) and all(n == 1 for n in by_topic.values())
    assert {t: c.reason for t, c in dead_cases.items()} == got_reasons
    assert stages == Counter({"normalise": len(dead_cases)})  # nothing reached the writer's refusal
    assert tables == (True,)
    assert infos == [("'); DROP TABLE readings; --",)]  # SQL text stays text
    assert seen == (1,)  # the empty Heartbeat marked its charger seen


def _print_accounting(cases: list[Case], goods: list[tuple[str, str, bytes, Stored, int]],
                      refused: dict[str, str], reasons: dict[str, str],
                      rows: list[tuple[str, str, int, float]], expected: Stored) -> None:
    print(f"\n{'case':45s} {'expected':22s} {'got':22s}")
    for c in cases:
        want = "refused by broker" if c.refused_by_broker else (c.reason or "stored")
        got = reasons.get(c.topic, "stored" if not c.reason else "-")
        got = "refused by broker" if c.name in refused else got
        print(f"{c.name:45s} {want:22s} {got:22s}")
    print(f"good uplinks published {len(goods)}, acknowledged {len(goods)}; "
          f"readings expected {len(expected)}, "
          f"stored {len(rows)}, duplicates {len(rows) - len({(d, m, t) for d, m, t, _ in rows})}, "
          f"lost {len(expected - {(d, m, v) for d, m, _, v in rows})}; dead-lettered {len(reasons)} of "
          f"{sum(1 for c in cases if c.reason)}; refused at the broker {len(refused)}")
