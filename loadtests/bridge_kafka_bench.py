"""The bridge alone, as deployed: MQTT (its own Mosquitto) → ``citysense bridge`` → Kafka raw topic.

Starts a private Mosquitto on a free loopback port, runs ``citysense bridge`` as its own process
(with ``CITYSENSE_BRIDGE_MQTT_CLIENT`` = ``--client``) against the local Kafka
(``$CITYSENSE_STATE_DIR/env``) and a fresh raw topic, then publishes ``--count`` QoS 1 uplinks of
``--size`` bytes from 400 device topics through the load generator's pool, at ``--rate``/s (0: as
fast as the broker takes them). It waits until the raw topic holds them all (bounded by
``--timeout``) and prints the bridge's rate (first publish → last record on Kafka) and the
bridge process's CPU per uplink (``/proc``, over the same interval). Nothing else is measured.
Keep ``--count`` ≤ 100,000 at full speed: the private broker queues at most that many for the
bridge (``max_queued_messages``) and drops the rest, which shows as uplinks missing on Kafka.

    python -m loadtests.bridge_kafka_bench --client asyncio --count 100000
    python -m loadtests.bridge_kafka_bench --client paho --count 100000 --rate 4000 --profile /tmp/b.svg
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from citysense.launch.embedded_mqtt import EmbeddedMosquitto, find_mosquitto
from citysense.settings import CommonSettings, load_settings
from loadtests.bridge_bench import free_port
from loadtests.e2e_measure import KafkaOffsets, cpu_seconds
from simulators.mqtt_pool import MqttPool, topic_field


def _bridge_env(kafka: str, mqtt_url: str, client: str, raw: str) -> dict[str, str]:
    return {
        **os.environ,
        "CITYSENSE_KAFKA_BOOTSTRAP": kafka, "CITYSENSE_MQTT_URL": mqtt_url,
        "CITYSENSE_MQTT_BRIDGE_USERNAME": "citysense-bridge", "CITYSENSE_MQTT_BRIDGE_PASSWORD": "b",
        "CITYSENSE_TOPIC_RAW": raw, "CITYSENSE_TOPIC_DLQ": f"{raw}.dlq",
        "CITYSENSE_BRIDGE_MQTT_CLIENT": client, "CITYSENSE_BRIDGE_CLIENT_ID": f"bench-{raw}",
        "CITYSENSE_BRIDGE_CANARY_INTERVAL_S": "0",  # the private broker's ACL has no canary rights
    }


async def _wait_subscribed(log_path: Path, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while b"subscribed to" not in log_path.read_bytes():  # noqa: ASYNC240 - a small log, polled
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"bridge did not subscribe; see {log_path}")
        await asyncio.sleep(0.2)


async def _publish(pool: MqttPool, count: int, size: int, rate: float) -> None:
    payload = b"x" * size
    topics = [topic_field(f"devices/air/air-{i:04d}/up") for i in range(400)]
    t0 = time.monotonic()
    for i in range(count):
        conn = i % pool.size
        if not pool.publish_nowait(conn, topics[i % 400], payload, 1):
            await pool.publish(conn, topics[i % 400], payload, 1)
        if i % 200 == 0:
            pool.flush()
            ahead = i / rate - (time.monotonic() - t0) if rate else 0.0
            await asyncio.sleep(max(ahead, 0.0))
    pool.flush()


def _py_spy(out: str, pid: int) -> subprocess.Popen[bytes]:
    fmt = () if out.endswith(".svg") else ("--format", "raw")
    return subprocess.Popen(["py-spy", "record", "--nonblocking", "--threads", "-r", "50", "--function",
                             "-o", out, *fmt, "--pid", str(pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def bench(client: str, count: int, size: int, rate: float, timeout_s: float,
                profile: str | None = None) -> dict[str, float | str]:
    settings = load_settings(CommonSettings)
    assert settings.kafka_bootstrap, "no Kafka: run `make services-up` (or set CITYSENSE_KAFKA_BOOTSTRAP)"
    work = Path(tempfile.mkdtemp(prefix="bridge-kafka-bench-"))
    work.chmod(0o755)  # noqa: ASYNC240 - set-up, before anything runs (the broker may run as nobody)
    broker = EmbeddedMosquitto(work / "mosquitto", free_port(), find_mosquitto() or "mosquitto")
    broker.configure({"citysense-bridge": "b", "citysense-loadgen": "l"}, [])
    broker.start()
    raw = f"bench.bridge.{uuid.uuid4().hex[:8]}.raw"
    log_path = work / "bridge.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(  # noqa: ASYNC220 - started once, not waited on here
            [sys.executable, "-m", "citysense", "bridge"],
            env=_bridge_env(settings.kafka_bootstrap, broker.url, client, raw),
            stdout=log_file, stderr=subprocess.STDOUT)
    offsets = KafkaOffsets(settings.kafka_bootstrap)
    pool = MqttPool("127.0.0.1", broker.port, username="citysense-loadgen", password="l", size=4,
                    record_latency=False)
    try:
        await _wait_subscribed(log_path, proc, 60)
        await offsets.start()
        await pool.start()
        base = await offsets.high(raw)
        spy = _py_spy(profile, proc.pid) if profile else None
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        await _publish(pool, count, size, rate)
        published_s = time.monotonic() - t0
        deadline = t0 + timeout_s
        while (got := await offsets.high(raw) - base) < count and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        elapsed, cpu = time.monotonic() - t0, cpu_seconds(proc.pid) - cpu0
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            spy.wait(timeout=30)
        await pool.drain(timeout_s=10)
    finally:
        await pool.stop()
        await offsets.stop()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        broker.stop()
        kept = Path("loadtests/results") / f"bridge-{client}.log"  # the bridge's log, kept for a look
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(log_path, kept)
        shutil.rmtree(work, ignore_errors=True)
    return {
        "client": client, "count": count, "size": size, "offered_rate": rate,
        "published_per_s": round(count / published_s), "on_kafka": got,
        "bridge_per_s": round(got / elapsed), "bridge_cpu_s": round(cpu, 2),
        "bridge_cpu_us_per_uplink": round(cpu * 1e6 / max(got, 1), 1),
        "bridge_cpu_share": round(cpu / elapsed, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--client", choices=("asyncio", "paho"), default="asyncio")
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--size", type=int, default=250)
    ap.add_argument("--rate", type=float, default=0.0, help="uplinks/s offered; 0 = as fast as possible")
    ap.add_argument("--timeout", type=float, default=180.0)
    ap.add_argument("--profile", help="py-spy the bridge while it works (needs py-spy): a flame graph "
                    "if the path ends in .svg, else collapsed stacks")
    args = ap.parse_args()
    print(json.dumps(asyncio.run(bench(args.client, args.count, args.size, args.rate, args.timeout,
                                       args.profile))))


if __name__ == "__main__":
    main()
