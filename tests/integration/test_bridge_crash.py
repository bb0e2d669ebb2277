"""A bridge killed with SIGKILL mid-stream loses nothing: the broker re-sends what it never acknowledged."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading

import pytest

from brokers.kafka import KafkaBus
from brokers.mqtt_base import MqttClientKind
from citysense.records import decode_envelope
from citysense.settings import CommonSettings
from ingest.codecs import codec_named
from simulators.air import air_device_ids
from simulators.fleet import Fleet
from simulators.runner import interleaved_air_uplinks
from tests.conftest import ServiceEnv
from tests.integration.pipeline import create_topics, wait_until

pytestmark = [pytest.mark.services, pytest.mark.slow]

DEVICES = 50
UPLINKS_PER_DEVICE = 100


def _start_bridge(
    s: CommonSettings, env: ServiceEnv, unique: str, kind: MqttClientKind,
) -> subprocess.Popen[bytes]:
    child_env = {
        **os.environ,
        "CITYSENSE_KAFKA_BOOTSTRAP": env.kafka_bootstrap,
        "CITYSENSE_MQTT_URL": env.mqtt_url,
        "CITYSENSE_MQTT_BRIDGE_USERNAME": env.bridge_username,
        "CITYSENSE_MQTT_BRIDGE_PASSWORD": env.bridge_password,
        "CITYSENSE_TOPIC_RAW": s.topic_raw,
        "CITYSENSE_TOPIC_READINGS": s.topic_readings,
        "CITYSENSE_TOPIC_DLQ": s.topic_dlq,
        "CITYSENSE_TOPIC_ALERTS": s.topic_alerts,
        "CITYSENSE_BRIDGE_SHARE_GROUP": f"test-{unique}",
        "CITYSENSE_BRIDGE_CLIENT_ID": f"test-bridge-{unique}",  # same id after the restart
        "CITYSENSE_BRIDGE_SESSION_EXPIRY_S": "120",
        "CITYSENSE_BRIDGE_MAX_BATCH": "50",
        "CITYSENSE_BRIDGE_MQTT_CLIENT": kind,
    }
    return subprocess.Popen([sys.executable, "-m", "citysense", "bridge"], env=child_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_for_line(process: subprocess.Popen[bytes], text: str) -> None:
    assert process.stderr is not None
    stderr = process.stderr
    for line in stderr:
        if text.encode() in line:
            # Keep draining, so the child never blocks on a full pipe.
            threading.Thread(target=lambda: stderr.read(), daemon=True).start()
            return
    raise AssertionError(f"bridge exited before logging {text!r}")


async def _raw_uplinks(bus: KafkaBus, topic: str, group: str) -> list[tuple[str, int]]:
    """(device, seq) of every envelope on the raw topic so far."""
    consumer = bus.consumer([topic], group)
    await consumer.start()
    seen: list[tuple[str, int]] = []
    codec = codec_named("cat1-json")
    try:
        idle = 0
        while idle < 3:
            batches = await consumer.getmany(1000, 5000)
            idle = 0 if batches else idle + 1
            for msgs in batches.values():
                for m in msgs:
                    env = decode_envelope(m.value)
                    decoded = codec.decode(env.device_id, env.payload, env.received_ns)
                    assert not hasattr(decoded, "reason_code")
                    seen.append((env.device_id, decoded.readings[0].seq))  # type: ignore[union-attr]
    finally:
        await consumer.stop()
    return seen


async def test_sigkilled_bridge_restarted_with_its_session_loses_nothing(
    service_env: ServiceEnv, pipeline_settings: CommonSettings, kafka_bus: KafkaBus, unique: str,
    mqtt_client_kind: MqttClientKind,
) -> None:
    s = pipeline_settings
    await create_topics(kafka_bus, s)
    ids = air_device_ids(DEVICES)
    uplinks = list(interleaved_air_uplinks(ids, UPLINKS_PER_DEVICE, seed=3, start_ns=1_750_000_000 * 10**9))
    expected = {(u.device_id, u.batch.readings[0].seq) for u in uplinks}

    bridge = _start_bridge(s, service_env, unique, mqtt_client_kind)
    fleet = Fleet(service_env.mqtt_url, service_env.device_secret, ids)
    await fleet.start()
    try:
        # From the SUBACK on, the broker keeps the bridge's session (and queues for it).
        await asyncio.wait_for(asyncio.to_thread(_wait_for_line, bridge, "subscribed to"), 60)
        publishing = asyncio.create_task(fleet.publish_all(uplinks, qos=1, rate=1000))
        await asyncio.sleep(2)
        bridge.send_signal(signal.SIGKILL)
        bridge.wait(timeout=10)
        stats = await publishing  # the broker keeps queueing for the dead bridge's session
        assert (stats.acked, stats.errors) == (len(uplinks), 0)
        bridge = _start_bridge(s, service_env, unique, mqtt_client_kind)

        async def raw_complete() -> bool:
            group = f"check-{unique}-{os.urandom(4).hex()}"
            return expected <= set(await _raw_uplinks(kafka_bus, s.topic_raw, group))

        await wait_until(raw_complete, 90, "every uplink on the raw topic after the restart")
    finally:
        await fleet.stop()
        bridge.send_signal(signal.SIGTERM)
        bridge.wait(timeout=30)
    seen = await _raw_uplinks(kafka_bus, s.topic_raw, f"final-{unique}")
    assert set(seen) == expected  # nothing lost, nothing foreign; re-sends may repeat an uplink
