"""``citysense demo``: the whole slice, live, in one process over the real services."""

from __future__ import annotations

import asyncio
import signal
import sys
import time

from psycopg_pool import AsyncConnectionPool

from brokers.kafka import KafkaBus, kafka_config
from citysense.launch.runners import build_bridge, create_topics, migrate_db
from citysense.settings import load_settings
from ingest.normaliser import Normaliser
from ingest.settings import BridgeSettings
from simulators.fleet import Fleet
from simulators.runner import run_air_fleet
from simulators.settings import SimulatorSettings
from storage.db import open_pool
from storage.readings_sink import ReadingsSink
from storage.settings import WriterSettings
from storage.stats import count_readings
from storage.writer import Writer


async def run_demo(*, devices: int, rate: float) -> None:
    bridge_settings = load_settings(BridgeSettings)
    writer_settings = load_settings(WriterSettings)
    await create_topics(writer_settings)
    await migrate_db(writer_settings)
    assert writer_settings.database_url is not None
    pool = await open_pool(writer_settings.database_url.get_secret_value())
    bus = KafkaBus(kafka_config(writer_settings, "citysense-demo"))
    bridge = build_bridge(bridge_settings)
    s = writer_settings
    normaliser = Normaliser(
        bus, raw_topic=s.topic_raw, readings_topic=s.topic_readings, dlq_topic=s.topic_dlq
    )
    writer = Writer(bus, ReadingsSink(pool), readings_topic=s.topic_readings, dlq_topic=s.topic_dlq)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    fleets: list[Fleet] = []
    stages = [asyncio.create_task(x.run()) for x in (bridge, normaliser, writer)]
    simulator = asyncio.create_task(run_air_fleet(
        load_settings(SimulatorSettings), devices=devices, uplinks=10**9, rate=rate, qos=1, seed=0,
        live=True, stop=stopping.is_set, fleet_ready=fleets.append,
    ))
    print(f"demo: {devices} LTE-Cat1 air stations at {rate:.0f} uplinks/s -> MQTT -> bridge -> Kafka "
          "-> normaliser -> Kafka -> writer -> PostgreSQL. Ctrl-C stops.", file=sys.stderr)
    t0 = time.monotonic()
    rows_at_start = await _count_readings(pool)
    try:
        while not stopping.is_set() and not any(t.done() for t in [*stages, simulator]):
            await asyncio.wait([asyncio.ensure_future(stopping.wait())], timeout=1)
            stored = await _count_readings(pool) - rows_at_start
            sent = fleets[0].stats.acked if fleets else 0
            sys.stderr.write(
                f"\r[{time.monotonic() - t0:5.0f}s] uplinks acked={sent} bridged={bridge.forwarded} "
                f"normalised={normaliser.readings_out} dead-lettered={normaliser.dead_letters} "
                f"readings stored={stored}   "
            )
            sys.stderr.flush()
    finally:
        print("\nstopping: draining in-flight batches...", file=sys.stderr)
        stopping.set()
        await asyncio.gather(simulator, return_exceptions=True)
        await asyncio.sleep(2)  # let the last uplinks travel the pipeline
        for stage in (bridge, normaliser, writer):
            stage.request_stop()
        results = await asyncio.gather(*stages, return_exceptions=True)
        await pool.close()
        for r in results:
            if isinstance(r, BaseException):
                print(f"stage ended with {r!r}", file=sys.stderr)


async def _count_readings(pool: AsyncConnectionPool) -> int:
    async with pool.connection() as conn:
        return await count_readings(conn)
