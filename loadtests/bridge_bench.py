"""How many uplinks/s one bridge moves from Mosquitto to a bus, without Kafka in the way.

Starts its own Mosquitto (as ``citysense up`` does) on a free loopback port, one bridge
(``--client`` asyncio or paho, MQTT 5, shared subscription, manual PUBACK after the bus has the
batch) writing to the in-memory bus, and publishes ``--count`` QoS 1 uplinks of ``--size`` bytes over 4 pooled
connections as fast as the broker takes them. Prints publish rate, bridge rate (first to last
forwarded) and loss. Bounded: stops after ``--count`` or ``--timeout`` seconds.

    python -m loadtests.bridge_bench --count 50000
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import tempfile
import time
from pathlib import Path

from brokers.memory import MemoryBus
from brokers.mqtt_base import MqttClientKind, MqttConfig, make_mqtt_client
from citysense.launch.embedded_mqtt import EmbeddedMosquitto, find_mosquitto
from ingest.bridge import Bridge
from simulators.mqtt_pool import MqttPool, topic_field


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def bench(count: int, size: int, timeout_s: float, client: MqttClientKind = "asyncio") -> None:
    work = Path(tempfile.mkdtemp(prefix="bridge-bench-"))
    work.chmod(0o755)  # noqa: ASYNC240 - set-up, before anything runs (the broker may run as nobody)
    broker = EmbeddedMosquitto(work / "mosquitto", free_port(), find_mosquitto() or "mosquitto")
    broker.configure({"citysense-bridge": "b", "citysense-loadgen": "l"}, [])
    broker.start()
    bus = MemoryBus()
    from brokers.base import TopicSpec

    await bus.create_topics([TopicSpec("raw", 8), TopicSpec("dlq", 1)])
    mqtt = make_mqtt_client(client, MqttConfig(url=broker.url, username="citysense-bridge", password="b",
                                               client_id="bench-bridge"), manual_ack=True)
    bridge = Bridge(mqtt, bus.producer(), "raw", dlq_topic="dlq")
    task = asyncio.create_task(bridge.run())
    await bridge.ready.wait()
    pool = MqttPool("127.0.0.1", broker.port, username="citysense-loadgen", password="l", size=4)
    await pool.start()
    payload = b"x" * size
    topics = [topic_field(f"devices/air/air-{i:04d}/up") for i in range(400)]
    first_forward: float | None = None
    try:
        t0 = time.monotonic()
        for i in range(count):
            if not pool.publish_nowait(i % 4, topics[i % 400], payload, 1):
                await pool.publish(i % 4, topics[i % 400], payload, 1)
            if i % 500 == 0:
                pool.flush()
                await asyncio.sleep(0)
                if first_forward is None and bridge.forwarded:
                    first_forward = time.monotonic()
        pool.flush()
        await pool.drain(timeout_s=timeout_s)
        published = time.monotonic() - t0
        deadline = time.monotonic() + timeout_s
        while bridge.forwarded < count and time.monotonic() < deadline:  # noqa: ASYNC110 - a counter
            await asyncio.sleep(0.01)
        done = time.monotonic() - t0
        print(f"published {count} x {size} B QoS 1 in {published:.2f}s ({count / published:,.0f}/s); "
              f"bridge forwarded {bridge.forwarded} in {done:.2f}s ({bridge.forwarded / done:,.0f}/s); "
              f"lost {count - bridge.forwarded}")
    finally:
        await pool.stop()
        bridge.request_stop()
        await task
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=50_000)
    ap.add_argument("--size", type=int, default=300)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--client", choices=("asyncio", "paho"), default="asyncio")
    args = ap.parse_args()
    asyncio.run(bench(args.count, args.size, args.timeout, args.client))


if __name__ == "__main__":
    main()
