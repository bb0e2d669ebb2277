"""When Kafka stalls, the bridge holds a bounded number of messages and acknowledges none of them."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import msgspec
import pytest

from brokers.base import KeyValue
from brokers.mqtt_base import MqttClientKind, MqttConfig, make_mqtt_client
from citysense.records import decode_dead_letter, decode_envelope
from ingest.bridge import Bridge
from simulators.air import air_device_ids
from simulators.fleet import Fleet
from simulators.runner import interleaved_air_uplinks
from tests.conftest import ServiceEnv
from tests.integration.pipeline import wait_until

pytestmark = [pytest.mark.services]

MAX_UNACKED = 200


class StalledProducer:
    """A producer whose sends wait until ``release`` is set (a Kafka outage)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.records: list[KeyValue] = []
        self.waiting = 0

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def send_batch(self, topic: str, records: Sequence[KeyValue]) -> None:
        self.waiting = len(records)
        await self.release.wait()
        self.records.extend(records)


async def test_stalled_kafka_bounds_what_the_bridge_holds_and_acknowledges_nothing(
    service_env: ServiceEnv, unique: str, mqtt_client_kind: MqttClientKind,
) -> None:
    producer = StalledProducer()
    mqtt = make_mqtt_client(
        mqtt_client_kind, MqttConfig(url=service_env.mqtt_url, username=service_env.bridge_username,
                   password=service_env.bridge_password, max_unacked_inbound=MAX_UNACKED),
        manual_ack=True,
    )
    bridge = Bridge(mqtt, producer, "unused", share_group=f"test-{unique}", max_batch=50)
    task = asyncio.create_task(bridge.run())
    ids = air_device_ids(20)
    uplinks = list(interleaved_air_uplinks(ids, 100, seed=1, start_ns=1_760_000_000 * 10**9))
    fleet = Fleet(service_env.mqtt_url, service_env.device_secret, ids)
    await fleet.start()
    try:
        await asyncio.wait_for(bridge.ready.wait(), 20)
        stats = await fleet.publish_all(uplinks, qos=1)  # the broker takes them all (and queues)
        assert (stats.acked, stats.errors) == (2000, 0)

        held = []
        for _ in range(20):  # watch the stalled bridge for a while
            held.append(mqtt.unacked_inbound + producer.waiting)
            await asyncio.sleep(0.1)
        assert 0 < max(held) <= MAX_UNACKED
        assert bridge.forwarded == 0 and producer.records == []

        producer.release.set()

        async def all_forwarded() -> bool:
            return bridge.forwarded >= len(uplinks)

        await wait_until(all_forwarded, 60, "the bridge to drain after Kafka came back")
        got = [decode_envelope(v) for _, v in producer.records]
        assert sorted((e.device_id, e.payload) for e in got) == sorted(
            (u.device_id, u.payload) for u in uplinks
        )
    finally:
        producer.release.set()
        bridge.request_stop()
        await fleet.stop()
        await asyncio.wait_for(task, 30)


async def test_an_envelope_too_large_for_kafka_is_dead_lettered_and_acknowledged(
    service_env: ServiceEnv, unique: str, mqtt_client_kind: MqttClientKind,
) -> None:
    """Unacknowledged, it would come back after every restart and stall the bridge for good."""
    producer = StalledProducer()
    producer.release.set()
    mqtt = make_mqtt_client(
        mqtt_client_kind, MqttConfig(url=service_env.mqtt_url, username=service_env.bridge_username,
                   password=service_env.bridge_password), manual_ack=True)
    bridge = Bridge(mqtt, producer, "raw", share_group=f"test-{unique}", dlq_topic="dlq",
                    max_envelope_bytes=2_000)
    task = asyncio.create_task(bridge.run())
    device = air_device_ids(1)[0]
    fleet = Fleet(service_env.mqtt_url, service_env.device_secret, [device])
    await fleet.start()
    try:
        await asyncio.wait_for(bridge.ready.wait(), 20)
        small = list(interleaved_air_uplinks([device], 3, seed=2, start_ns=1_760_000_000 * 10**9))
        topic = small[0].topic
        client = fleet._clients[device]
        for payload in (small[0].payload, b"x" * 5_000, small[1].payload):
            await client.publish(topic, payload, qos=1)

        async def handled() -> bool:
            return bridge.forwarded + bridge.dead_letters >= 3

        await wait_until(handled, 30, "the bridge to handle all three uplinks")
        assert (bridge.forwarded, bridge.dead_letters) == (2, 1)
        letters = [decode_dead_letter(v) for _, v in producer.records if _is_dead_letter(v)]
        assert [(d.reason_code, d.stage, d.device_id, len(d.original)) for d in letters] == [
            ("oversize", "bridge", device, 5_000)]
    finally:
        bridge.request_stop()
        await fleet.stop()
        await asyncio.wait_for(task, 30)


def _is_dead_letter(value: bytes) -> bool:
    try:
        decode_dead_letter(value)
    except msgspec.DecodeError:
        return False
    return True
