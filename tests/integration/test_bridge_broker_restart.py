"""The bridge's MQTT client across a broker restart: it reconnects to its persistent session and every
uplink the broker acknowledged reaches the bus (re-sends may repeat some; downstream absorbs them).

A private Mosquitto (persistence on, as ``citysense up`` runs it) on a free port, so the shared
local broker is never restarted. The bus is slow on purpose, so the broker still holds a queue for
the bridge when it stops.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from brokers.base import KeyValue
from brokers.mqtt_base import MqttClientKind, MqttConfig, make_mqtt_client
from citysense.launch.embedded_mqtt import EmbeddedMosquitto, find_mosquitto
from citysense.records import decode_envelope
from ingest.bridge import Bridge
from loadtests.bridge_bench import free_port
from simulators.mqtt_pool import MqttPool, topic_field
from tests.integration.pipeline import wait_until

pytestmark = [pytest.mark.slow]

UPLINKS = 5_000


class SlowProducer:
    def __init__(self) -> None:
        self.records: list[KeyValue] = []

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def send_batch(self, topic: str, records: Sequence[KeyValue]) -> None:
        await asyncio.sleep(0.05)
        self.records.extend(records)


@pytest.fixture
def private_broker() -> Iterator[EmbeddedMosquitto]:
    executable = find_mosquitto()
    if executable is None:
        pytest.skip("no mosquitto binary")
    # Not pytest's tmp_path: its parents are 0700, and as root the broker runs as nobody.
    work = Path(tempfile.mkdtemp(prefix="citysense-restart-"))
    work.chmod(0o755)
    broker = EmbeddedMosquitto(work / "mosquitto", free_port(), executable)
    broker.configure({"citysense-bridge": "b", "citysense-loadgen": "l"}, [])
    broker.start()
    yield broker
    broker.stop()
    shutil.rmtree(work, ignore_errors=True)


async def test_bridge_reconnects_after_a_broker_restart_and_loses_nothing(
    private_broker: EmbeddedMosquitto, mqtt_client_kind: MqttClientKind,
) -> None:
    producer = SlowProducer()
    mqtt = make_mqtt_client(mqtt_client_kind, MqttConfig(
        url=private_broker.url, username="citysense-bridge", password="b", client_id="restart-bridge",
        clean_start=False, session_expiry_s=600, max_unacked_inbound=500, reconnect_max_s=1), manual_ack=True)
    bridge = Bridge(mqtt, producer, "raw", dlq_topic="dlq", max_batch=100, canary_interval_s=0)
    task = asyncio.create_task(bridge.run())
    try:
        await asyncio.wait_for(bridge.ready.wait(), 20)
        pool = MqttPool("127.0.0.1", private_broker.port, username="citysense-loadgen", password="l", size=2)
        await pool.start()
        for i in range(UPLINKS):
            await pool.publish(i % 2, topic_field(f"devices/air/air-{i % 100:04d}/up"), b"%d" % i, 1)
        await pool.drain(30)
        await pool.stop()
        assert (pool.stats.acked, pool.stats.errors) == (UPLINKS, 0)
        assert bridge.forwarded < UPLINKS  # the broker still holds part of the queue

        private_broker.stop()  # SIGTERM: Mosquitto saves the session and its queue
        private_broker.start()

        def delivered() -> set[int]:
            return {int(decode_envelope(v).payload) for _, v in producer.records}

        async def all_delivered() -> bool:
            return len(delivered()) == UPLINKS

        await wait_until(all_delivered, 120, "every acknowledged uplink on the bus after the restart")
        assert delivered() == set(range(UPLINKS))
        assert mqtt.disconnects == 1
    finally:
        bridge.request_stop()
        await asyncio.wait_for(task, 30)
