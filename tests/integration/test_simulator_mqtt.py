"""Simulators against the real Mosquitto: pooled load-generator connections, ACL, delivery.

Topics live under a per-test root (``devices/simtest-<uuid>/{kind}/{id}/up``,
five levels) so the pipeline's ``devices/+/+/up`` bridges never see them.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from urllib.parse import urlsplit

import pytest

from brokers.exceptions import BrokerError
from brokers.mqtt import MqttClient, MqttConfig
from citysense.records import RecordBatch
from ingest.codecs import codec_named
from ingest.profiles import PROFILES
from simulators.fleet import Fleet
from simulators.load import build_streams, run_load, time_ordered
from simulators.mqtt_pool import MqttPool
from simulators.runner import run_scenario
from simulators.scenario import CityScenario, load_scenario
from simulators.scenario_registry import DeviceSpec, city_registry
from simulators.settings import SimulatorSettings
from tests.conftest import ServiceEnv

pytestmark = pytest.mark.services


def _pool(env: ServiceEnv, size: int = 3) -> MqttPool:
    url = urlsplit(env.mqtt_url)
    return MqttPool(url.hostname or "127.0.0.1", url.port or 1883, username="citysense-loadgen",
                    password=env.raw["CITYSENSE_MQTT_LOADGEN_PASSWORD"], size=size)


async def _subscriber(env: ServiceEnv, topic_filter: str) -> MqttClient:
    sub = MqttClient(MqttConfig(url=env.mqtt_url, username=env.bridge_username,
                                password=env.bridge_password))
    await sub.start()
    await sub.subscribe(topic_filter, qos=1)
    await asyncio.sleep(0.3)  # SUBACK
    return sub


async def _receive(sub: MqttClient, count: int, timeout_s: float = 30.0) -> list[tuple[str, bytes]]:
    got: list[tuple[str, bytes]] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count and time.monotonic() < deadline:
        batch = await sub.receive_batch(1000, 0.5)
        got.extend((m.topic, m.payload) for m in batch)
        sub.ack(batch)
    return got


@pytest.mark.parametrize("qos", [0, 1])
async def test_pool_delivers_county_uplinks_intact(service_env: ServiceEnv, unique: str, qos: int) -> None:
    sc = load_scenario("county")
    assert isinstance(sc, CityScenario)
    by_kind: dict[str, list[DeviceSpec]] = {}
    for d in city_registry(sc).devices:
        by_kind.setdefault(d.kind, []).append(d)
    devices = [d for group in by_kind.values() for d in group[:20]]
    streams = build_streams(devices, seed=3, start_ns=time.time_ns() - 86_400 * 10**9)
    sent = list(itertools.islice(time_ordered(streams), 2000))
    root = f"devices/simtest-{unique}"
    sub = await _subscriber(service_env, f"{root}/#")
    pool = _pool(service_env)
    await pool.start()
    try:
        result = await run_load(pool, iter(sent), rate=3000, duration_s=20, qos=qos, topic_root=root)
        got = await _receive(sub, len(sent))
    finally:
        await pool.stop()
        await sub.stop()
    assert result.sent == len(sent) and result.errors == 0
    if qos:
        assert result.acked == len(sent) and len(result.latencies_ns) == len(sent)
    assert len(got) == len(sent)  # nothing lost on the loopback broker at this rate
    kinds = set()
    expected = {(u.device_id, u.payload): u for u in sent}
    for topic, payload in got:
        _, _, kind, device_id, _ = topic.split("/")
        u = expected[device_id, payload]
        decoded = codec_named(PROFILES[kind].codec).decode(device_id, payload, 0)
        assert isinstance(decoded, RecordBatch) and decoded == u.batch
        kinds.add(kind)
    assert kinds == {"bridge", "charger", "env", "air", "weather", "rain", "water", "meter"}


async def test_run_scenario_paces_and_reconnects(service_env: ServiceEnv, unique: str) -> None:
    settings = SimulatorSettings(
        mqtt_url=service_env.mqtt_url,
        mqtt_loadgen_password=service_env.raw["CITYSENSE_MQTT_LOADGEN_PASSWORD"],
        device_secret=service_env.device_secret,
    )
    root = f"devices/simtest-{unique}"
    started = time.monotonic()
    result = await run_scenario(settings, "county", rate=400, duration_s=3, qos=1, seed=5,
                                connections=2, topic_root=root)
    elapsed = time.monotonic() - started
    assert result.errors == 0 and result.acked == result.sent
    assert 1000 <= result.sent <= 1300  # ~rate x duration, plus duplicates
    assert elapsed < 30
    assert set(result.faults) <= {"duplicate", "out_of_order", "clock_skew", "malformed",
                                  "truncated", "unknown_device", "oversize", "reconnect_burst"}


async def test_loadgen_login_is_needed_for_other_devices_topics(service_env: ServiceEnv) -> None:
    url = urlsplit(service_env.mqtt_url)
    pool = MqttPool(url.hostname or "127.0.0.1", url.port or 1883, username="citysense-loadgen",
                    password="wrong-password", size=1)
    with pytest.raises(BrokerError, match=r"CONNACK|connection lost"):
        await pool.start()
    await pool.stop()


async def test_per_device_fleet_still_publishes_as_each_device(service_env: ServiceEnv) -> None:
    from simulators.air import air_uplinks

    fleet = Fleet(service_env.mqtt_url, service_env.device_secret, ["air-0098", "air-0099"])
    await fleet.start()
    try:
        plan = itertools.chain(*(air_uplinks(d, 5, start_ns=time.time_ns(), interval_ns=10**9)
                                 for d in ("air-0098", "air-0099")))
        stats = await fleet.publish_all(plan, qos=1, rate=200)
    finally:
        await fleet.stop()
    assert (stats.sent, stats.acked, stats.errors) == (10, 10, 0)
