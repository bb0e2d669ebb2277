"""Ceilings measured in the same run as the end-to-end steps, each part alone.

- MQTT publish -> subscribe: ``loadtests/simulator_bench.py`` at QoS 1 against
  the benchmark's private broker, with its subscriber counting what arrives
  (topics under ``devices/bench-<pid>/`` that the bridge does not match);
- Kafka produce -> consume: envelope-sized records to a fresh topic with the
  raw topic's partition count, then read back by a consumer group;
- partitioned binary COPY: ``storage_bench``'s raw COPY (rows prepared off the
  clock) into a scratch database's day partition.

Each reports messages (or rows) per second; the Kafka and COPY ones also the
server's CPU per message (the Kafka JVM and PostgreSQL are shared with other
work on this machine, so those figures include it).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from brokers.base import TopicSpec
from brokers.kafka import KafkaBus, KafkaConfig
from citysense.settings import PROJECT_ROOT, state_dir
from loadtests.e2e_measure import cpu_seconds, find_pid
from loadtests.e2e_stack import Stack
from loadtests.storage_bench import _RAW_COPY as RAW_COPY
from loadtests.storage_bench import _RAW_TYPES as RAW_TYPES
from loadtests.storage_bench import prepare_raw
from loadtests.storage_common import scratch_database, uplinks
from storage import migrations, partitions


async def mqtt_ceiling(stack: Stack, seconds: float) -> dict[str, Any]:
    env = {**os.environ, "CITYSENSE_MQTT_URL": stack.mqtt_url, "CITYSENSE_MQTT_PORT": str(stack.mqtt_port),
           "CITYSENSE_MQTT_BRIDGE_PASSWORD": stack.bridge_password,
           "CITYSENSE_MQTT_LOADGEN_PASSWORD": stack.loadgen_password, "PYTHONPATH": str(PROJECT_ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(PROJECT_ROOT / "loadtests/simulator_bench.py"), "--qos", "1", "--rate",
        "60000", "--duration", str(seconds), "--verify", "--json", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), seconds + 240)
    lines = out.decode().strip().splitlines()
    if proc.returncode != 0 or not lines:
        # Say why instead of an IndexError (it once failed silently: the load generator's own
        # password was missing from this environment).
        return {"error": f"simulator_bench exited {proc.returncode}: {err.decode()[-500:]}"}
    r = json.loads(lines[-1])
    return {"msg_per_s": r["msg_per_s"], "sent": r["sent"], "acked": r["acked"],
            "received_by_subscriber": r["received_by_subscriber"], "loss": r["loss"],
            "puback_ms": r["puback_ms"]}


async def kafka_ceiling(stack: Stack, seconds: float, value_bytes: int = 220) -> dict[str, Any]:
    bus = KafkaBus(KafkaConfig(bootstrap=stack.kafka, client_id="e2e-ceiling", linger_ms=5))
    topic = stack.topics["ceiling"]
    await bus.create_topics([TopicSpec(topic, stack.partitions)])
    jvm = find_pid("kafka.Kafka", str(state_dir()))
    value = os.urandom(value_bytes)
    batch = [(f"dev-{i % 100_000:06d}".encode(), value) for i in range(2000)]
    producer = bus.producer()
    await producer.start()
    cpu0 = cpu_seconds(jvm) if jvm else 0.0
    sent, t0 = 0, time.perf_counter()
    try:
        while time.perf_counter() - t0 < seconds:
            await producer.send_batch(topic, batch)
            sent += len(batch)
    finally:
        await producer.stop()
    produce_s = time.perf_counter() - t0
    consumer = bus.consumer([topic], f"e2e-ceiling-{uuid.uuid4().hex[:6]}")
    await consumer.start()
    got, t1 = 0, time.perf_counter()
    try:
        while got < sent and time.perf_counter() - t1 < seconds * 4:
            for msgs in (await consumer.getmany(500, 10_000)).values():
                got += len(msgs)
    finally:
        await consumer.stop()
    consume_s = time.perf_counter() - t1
    jvm_s = (cpu_seconds(jvm) - cpu0) if jvm else 0.0
    return {"produce_msg_per_s": round(sent / produce_s), "consume_msg_per_s": round(got / consume_s),
            "sent": sent, "consumed": got, "value_bytes": value_bytes,
            "kafka_cpu_us_per_msg_produced_and_consumed": round(jvm_s / sent * 1e6, 1) if sent else None}


async def copy_ceiling(devices: int = 20_000, per_device: int = 10, *, shuffled: bool = False
                       ) -> dict[str, Any]:
    """Raw binary COPY of ``devices`` x ``per_device`` air uplinks (six readings each) into a day
    partition, 800 uplinks a transaction, on one connection whose backend's CPU is read from /proc
    (exact, and none of the shared cluster's other work). ``shuffled``: uplinks in a random order,
    as the writer gets them from a topic partitioned by device hash (the storage benchmark's
    stream is ordered by device within each round)."""
    day = datetime(2031, 1, 1, tzinfo=UTC)
    async with scratch_database("cs_e2e_copy") as url:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await migrations.migrate(conn, prefer_timescale=False)
            await partitions.ensure(conn, "readings", [day], timedelta(days=1))
        stream = uplinks(devices, per_device, day)
        if shuffled:
            random.Random(7).shuffle(stream)
        prepared = prepare_raw(stream)
        async with await psycopg.AsyncConnection.connect(url) as conn:
            backend = conn.info.backend_pid
            cpu0, t = cpu_seconds(backend), time.perf_counter()
            for rows in prepared:
                async with conn.transaction(), conn.cursor() as cur, cur.copy(RAW_COPY) as copy:
                    copy.set_types(RAW_TYPES)
                    for row in rows:
                        await copy.write_row(row)
            elapsed, pg_s = time.perf_counter() - t, cpu_seconds(backend) - cpu0
    n = sum(len(r) for r in prepared)
    return {"rows_per_s": round(n / elapsed), "rows": n, "devices": devices, "shuffled": shuffled,
            "postgres_backend_cpu_us_per_row": round(pg_s / n * 1e6, 2) if n else None}


async def ceilings(stack: Stack, seconds: float) -> dict[str, Any]:
    print("ceilings: MQTT, Kafka, COPY (each alone)", file=sys.stderr)
    return {"mqtt_publish_subscribe_qos1": await mqtt_ceiling(stack, seconds),
            "kafka_produce_consume": await kafka_ceiling(stack, seconds),
            # 1.2 M rows: as the storage benchmark orders them, and from 100,000 devices in the
            # order a device-hashed topic delivers them (index locality)
            "partitioned_binary_copy_2k_devices": await copy_ceiling(2_000, 100),
            "partitioned_binary_copy_100k_devices_shuffled": await copy_ceiling(100_000, 2, shuffled=True)}


def _copy_only() -> None:
    """``python -m loadtests.e2e_ceilings``: the COPY ceilings alone (index locality by device count)."""
    async def both() -> dict[str, Any]:
        return {"2k_devices": await copy_ceiling(2_000, 100),
                "100k_devices": await copy_ceiling(100_000, 2),
                "100k_devices_shuffled": await copy_ceiling(100_000, 2, shuffled=True)}

    print(json.dumps(asyncio.run(both())))


if __name__ == "__main__":
    _copy_only()
