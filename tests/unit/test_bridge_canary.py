"""The bridge's canary with a fake MQTT client: a refused canary is "unsent", never "lost";
canaries and echoes are acknowledged and never forwarded."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from prometheus_client import CollectorRegistry

from brokers.base import TopicSpec
from brokers.exceptions import BrokerError
from brokers.memory import MemoryBus
from brokers.mqtt import ConnectionListener, InboundMessage, MqttConfig
from citysense.metrics import Metrics
from ingest.bridge import Bridge


class FakeMqtt:
    def __init__(self, refuse_canaries: bool) -> None:
        self.config = MqttConfig(client_id="b1")
        self.refuse = refuse_canaries
        self.inbox: list[InboundMessage] = []
        self.acked: list[InboundMessage] = []
        self.published: list[tuple[str, bytes]] = []

    def set_connection_listener(self, listener: ConnectionListener | None) -> None:
        self.listener = listener

    def on_side_messages(self, topic_filter: str, handler: object) -> None:
        return None

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def subscribe(self, topic: str, qos: int = 1) -> None:
        return None

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.refuse and topic.startswith("devices/_canary/"):
            fut.set_exception(BrokerError("PUBLISH mid=1 refused, reason code 0x87"))
            return fut
        self.published.append((topic, payload))
        if topic == "devices/_canary/b1/up":  # the broker hands it to the group: here, to us
            self.inbox.append(InboundMessage(topic, payload, 1, 1, 0))
        elif topic == "citysense/bridge/canary-seen/b1":
            self.inbox.append(InboundMessage(topic, payload, 1, 2, 0))
        fut.set_result(None)
        return fut

    async def receive_batch(self, max_messages: int, timeout_s: float) -> list[InboundMessage]:
        await asyncio.sleep(0.01)
        batch, self.inbox = self.inbox[:max_messages], self.inbox[max_messages:]
        return batch

    def ack(self, messages: Sequence[InboundMessage]) -> None:
        self.acked.extend(messages)


async def run_for(refuse: bool, seconds: float) -> tuple[CollectorRegistry, FakeMqtt, Bridge]:
    bus = MemoryBus()
    await bus.create_topics([TopicSpec("raw", 1), TopicSpec("dlq", 1)])
    registry = CollectorRegistry()
    mqtt = FakeMqtt(refuse)
    bridge = Bridge(mqtt, bus.producer(), "raw", share_group="g", dlq_topic="dlq",  # type: ignore[arg-type]
                    metrics=Metrics(registry), canary_interval_s=0.05, canary_timeout_s=0.2)
    task = asyncio.create_task(bridge.run())
    await asyncio.sleep(seconds)
    bridge.request_stop()
    await task
    return registry, mqtt, bridge


def count(registry: CollectorRegistry, outcome: str) -> float:
    return registry.get_sample_value("citysense_bridge_canaries_total", {"outcome": outcome}) or 0.0


async def test_returned_canaries_are_acknowledged_and_not_forwarded() -> None:
    registry, mqtt, bridge = await run_for(refuse=False, seconds=0.5)
    assert count(registry, "returned") >= 3 and count(registry, "lost") == 0
    assert count(registry, "echoed") >= count(registry, "returned")  # an echo may be in flight at stop
    assert bridge.forwarded == 0
    assert len(mqtt.acked) == count(registry, "echoed") + count(registry, "returned")


async def test_a_refused_canary_is_unsent_not_lost() -> None:
    registry, _, bridge = await run_for(refuse=True, seconds=0.6)
    assert count(registry, "unsent") >= 3
    assert count(registry, "lost") == 0 and bridge.canaries_lost == 0
