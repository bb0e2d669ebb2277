"""SSE fan-out: alert transitions from the alerts topic to many live-stream clients.

    .venv/bin/python loadtests/api_sse_bench.py [--clients 200] [--events 200] [--rate 20]

Starts ``citysense api`` (its own process) on a scratch database with fresh topics, opens
``--clients`` streams of ``/api/v1/stream/alerts``, produces ``--events`` alert transitions
at ``--rate`` per second (each stamped with its send time), and prints how many each client
received and the delay from produce to receipt (p50/p99/max). The pipeline is not running
beside it; every process shares this machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from brokers.base import TopicSpec
from brokers.kafka import KafkaBus, KafkaConfig
from citysense.settings import CommonSettings, load_settings
from loadtests.storage_common import scratch_database
from storage import apikeys, migrations


async def client(base: str, key: str, delays: list[float], counts: list[int], ready: asyncio.Event,
                 opened: list[int], total: int, stop: asyncio.Event) -> None:
    got = 0
    timeout = httpx.Timeout(10, read=None)  # a stream waits as long as it must between events
    async with httpx.AsyncClient(base_url=base, headers={"X-API-Key": key}, timeout=timeout) as c, \
            c.stream("GET", "/api/v1/stream/alerts") as r:
        async for line in r.aiter_lines():
            if line.startswith("event: hello"):
                opened.append(1)
                if len(opened) == total:
                    ready.set()
            elif line.startswith("data:") and "sent_ns" in line:
                delays.append((time.time_ns() - json.loads(line[5:])["sent_ns"]) / 1e6)
                got += 1
            if stop.is_set():
                break
    counts.append(got)


def _start_api(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([str(Path(sys.executable).parent / "citysense"), "api"], env=env,
                            stdout=subprocess.DEVNULL, stderr=log.open("w"))


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20.0)
    args = parser.parse_args()
    common = load_settings(CommonSettings)
    bootstrap = common.kafka_bootstrap or ""
    topic = f"bench.{uuid.uuid4().hex[:8]}.alerts"
    readings = topic.replace("alerts", "readings")
    bus = KafkaBus(KafkaConfig(bootstrap=bootstrap, client_id="sse-bench"))
    await bus.create_topics([TopicSpec(topic, 1), TopicSpec(readings, 1)])
    async with scratch_database("cs_sse_bench") as url:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await migrations.migrate(conn, prefer_timescale=False)
            _, key = await apikeys.create_key(conn, "bench", "viewer")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "CITYSENSE_DATABASE_URL": url, "CITYSENSE_API_PORT": str(port),
               "CITYSENSE_TOPIC_ALERTS": topic, "CITYSENSE_TOPIC_READINGS": readings,
               "CITYSENSE_API_RATE_BURST": "100000", "CITYSENSE_API_RATE_PER_S": "100000"}
        log = Path(tempfile.gettempdir()) / f"citysense-sse-bench-{port}.log"
        api = await asyncio.to_thread(_start_api, env, log)
        try:
            base = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(timeout=1) as probe:
                for _ in range(150):
                    try:
                        if (await probe.get(f"{base}/readyz")).json().get("kafka") == "ok":
                            break
                    except (httpx.HTTPError, ValueError):
                        pass
                    await asyncio.sleep(0.2)
                else:
                    raise SystemExit(f"the API did not get ready; see {log}")
            delays: list[float] = []
            counts: list[int] = []
            opened: list[int] = []
            ready, stop = asyncio.Event(), asyncio.Event()
            tasks = [asyncio.create_task(client(base, key, delays, counts, ready, opened, args.clients, stop))
                     for _ in range(args.clients)]
            await asyncio.wait_for(ready.wait(), 60)
            producer = bus.producer()
            await producer.start()
            try:
                for i in range(args.events):
                    body = {"alert_id": i, "seq": 1, "grade": 1 + i % 4, "device_id": "bench",
                            "sent_ns": time.time_ns()}
                    await producer.send_batch(topic, [(b"bench", json.dumps(body).encode())])
                    await asyncio.sleep(1 / args.rate)
            finally:
                await producer.stop()
            for _ in range(150):  # up to 30 s for the last events to arrive
                if len(delays) >= args.clients * args.events:
                    break
                await asyncio.sleep(0.2)  # polling a plain list, bounded
            stop.set()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            api.terminate()
            api.wait(timeout=20)
    expected = args.clients * args.events
    q = statistics.quantiles(delays, n=100) if len(delays) > 1 else [0.0] * 99
    print(f"{args.clients} clients x {args.events} alert events at {args.rate}/s: received "
          f"{len(delays)}/{expected}; delay produce->client p50 {q[49]:.1f} ms, p99 {q[98]:.1f} ms, "
          f"max {max(delays, default=0):.1f} ms (API, Kafka, clients on one shared machine)")


if __name__ == "__main__":
    asyncio.run(main())
