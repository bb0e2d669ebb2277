"""Baseline: the same pregenerated uplinks through paho (brokers.mqtt.MqttClient) instead of the lean pool.

    .venv/bin/python loadtests/sim_paho_bench.py --messages 200000 --qos 0

Same devices and payloads as ``simulator_bench.py --mode pregenerated``, same
loadgen login, topics under ``devices/bench-<pid>/...``; publishes as fast as
paho accepts with at most ``--window`` unacknowledged per run. Bounded by
``--messages`` and ``--timeout``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import time

from brokers.mqtt import MqttClient, MqttConfig
from citysense.settings import load_settings
from simulators.load import build_streams, round_robin
from simulators.scenario import ScaleScenario, load_scenario
from simulators.scenario_registry import scale_devices
from simulators.settings import SimulatorSettings


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=100_000)
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--qos", type=int, choices=(0, 1), default=0)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--window", type=int, default=8000)
    ap.add_argument("--timeout", type=float, default=60.0)
    a = ap.parse_args()
    settings = load_settings(SimulatorSettings)
    assert settings.mqtt_url and settings.mqtt_loadgen_password
    sc = load_scenario("scale")
    assert isinstance(sc, ScaleScenario)
    streams = build_streams(scale_devices(sc, a.devices), seed=7, start_ns=1_735_689_600 * 10**9)
    root = f"devices/bench-{os.getpid()}"
    bank = [(root + u.topic[len("devices"):], u.payload)
            for u in itertools.islice(round_robin(streams), a.messages)]
    clients = [MqttClient(MqttConfig(url=settings.mqtt_url, username=settings.mqtt_loadgen_username,
                                     password=settings.mqtt_loadgen_password.get_secret_value(),
                                     max_inflight=1000))
               for _ in range(a.connections)]
    await asyncio.gather(*(c.start() for c in clients))
    pending: set[asyncio.Future[None]] = set()
    errors = 0
    started = time.monotonic()
    try:
        for i, (topic, payload) in enumerate(bank):
            if time.monotonic() - started > a.timeout:
                break
            if len(pending) >= a.window:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                errors += sum(1 for f in done if f.exception() is not None)
            pending.add(clients[i % a.connections].publish(topic, payload, a.qos))
        if pending:
            done, _ = await asyncio.wait(pending, timeout=30)
            errors += sum(1 for f in done if f.exception() is not None)
        elapsed = time.monotonic() - started
    finally:
        await asyncio.gather(*(c.stop() for c in clients))
    print(f"paho: {len(bank)} uplinks QoS {a.qos} over {a.connections} connections in {elapsed:.2f} s "
          f"= {len(bank) / elapsed:.0f} msg/s, errors={errors} (load average {os.getloadavg()})")


if __name__ == "__main__":
    asyncio.run(main())
