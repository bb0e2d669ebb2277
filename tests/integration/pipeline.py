"""Helpers to run the slice's stages inside a test, on real services."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import psycopg

from brokers.base import TopicSpec
from brokers.kafka import KafkaBus, KafkaConfig
from brokers.mqtt_base import MqttClientKind, MqttConfig, make_mqtt_client
from citysense.settings import CommonSettings
from ingest.bridge import Bridge
from ingest.normaliser import Normaliser
from ingest.settings import BRIDGE_MQTT_CLIENT_DEFAULT
from storage.db import open_pool
from storage.readings_sink import ReadingsSink
from storage.writer import Writer


async def create_topics(bus: KafkaBus, s: CommonSettings) -> None:
    await bus.create_topics([
        TopicSpec(s.topic_raw, s.raw_partitions),
        TopicSpec(s.topic_readings, s.readings_partitions),
        TopicSpec(s.topic_dlq, s.dlq_partitions),
    ])


@dataclass
class RunningPipeline:
    bridge: Bridge
    normaliser: Normaliser
    writer: Writer | None


@asynccontextmanager
async def running_pipeline(
    s: CommonSettings, *, bridge_user: str, bridge_password: str, database_url: str | None,
    share_group: str, mqtt_client: MqttClientKind | None = None,
) -> AsyncIterator[RunningPipeline]:
    """Bridge + normaliser (+ writer when a database is given) as tasks, stopped cleanly after."""
    assert s.kafka_bootstrap and s.mqtt_url
    bus = KafkaBus(KafkaConfig(bootstrap=s.kafka_bootstrap, client_id="test-pipeline", linger_ms=2))
    await create_topics(bus, s)
    kind = mqtt_client or BRIDGE_MQTT_CLIENT_DEFAULT  # as deployed
    mqtt = make_mqtt_client(kind, MqttConfig(url=s.mqtt_url, username=bridge_user, password=bridge_password),
                            manual_ack=True)
    bridge = Bridge(mqtt, bus.producer(), s.topic_raw, share_group=share_group, dlq_topic=s.topic_dlq)
    normaliser = Normaliser(bus, raw_topic=s.topic_raw, readings_topic=s.topic_readings,
                            dlq_topic=s.topic_dlq, group=f"{share_group}-normalise")
    pool = await open_pool(database_url) if database_url else None
    writer = (Writer(bus, ReadingsSink(pool), readings_topic=s.topic_readings, dlq_topic=s.topic_dlq,
                     group=f"{share_group}-writer") if pool else None)
    stages = [bridge, normaliser, *([writer] if writer else [])]
    tasks = [asyncio.create_task(x.run()) for x in stages]
    try:
        await asyncio.wait_for(bridge.ready.wait(), 20)
        yield RunningPipeline(bridge, normaliser, writer)
    finally:
        for x in stages:
            x.request_stop()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        if pool:
            await pool.close()
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    """Poll ``predicate`` until true; fail with ``what`` after ``timeout_s`` (a bound, not a speed test)."""
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.25)


async def count_rows(database_url: str, table: str = "readings") -> int:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        query = psycopg.sql.SQL("SELECT count(*) FROM {}").format(psycopg.sql.Identifier(table))
        cur = await conn.execute(query)
        row = await cur.fetchone()
        return int(row[0]) if row else 0
