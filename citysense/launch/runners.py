"""Build each deployable from its settings and run it until SIGTERM/SIGINT.

A signal only asks the stage to stop; the stage finishes and commits the
batch in flight, then closes its clients.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Callable

from brokers.base import TopicSpec
from brokers.kafka import KafkaBus, kafka_config
from brokers.mqtt_base import MqttConfig, make_mqtt_client
from citysense.exceptions import ConfigurationError
from citysense.logs import attach_metrics as attach_log_metrics
from citysense.metrics import Metrics
from citysense.settings import CommonSettings
from ingest.bridge import Bridge
from ingest.normaliser import Normaliser
from ingest.settings import BridgeSettings, NormaliserSettings
from storage import migrations
from storage.db import open_pool
from storage.readings_sink import ReadingsSink
from storage.settings import WriterSettings
from storage.writer import Writer

log = logging.getLogger("citysense")


def _on_signals(request_stop: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop)


def _require(value: object, name: str) -> None:
    if not value:
        raise ConfigurationError(f"CITYSENSE_{name} is not set (run `citysense services up` or export it)")


def topic_specs(settings: CommonSettings) -> list[TopicSpec]:
    return [
        TopicSpec(settings.topic_raw, settings.raw_partitions),
        TopicSpec(settings.topic_readings, settings.readings_partitions),
        TopicSpec(settings.topic_dlq, settings.dlq_partitions),
        TopicSpec(settings.topic_alerts, settings.readings_partitions),
    ]


async def create_topics(settings: CommonSettings) -> None:
    _require(settings.kafka_bootstrap, "KAFKA_BOOTSTRAP")
    await KafkaBus(kafka_config(settings, "citysense-admin")).create_topics(topic_specs(settings))


async def migrate_db(settings: CommonSettings) -> list[int]:
    import psycopg

    _require(settings.database_url, "DATABASE_URL")
    assert settings.database_url is not None
    async with await psycopg.AsyncConnection.connect(settings.database_url.get_secret_value()) as conn:
        return await migrations.migrate(conn)


def metrics_for(settings: CommonSettings) -> Metrics:
    """The process's metrics; served on ``CITYSENSE_METRICS_PORT`` when it is set."""
    metrics = Metrics()
    attach_log_metrics(metrics)  # counts of logged and rate-limited warnings
    if settings.metrics_port:
        metrics.serve(settings.metrics_port, settings.metrics_host)
        log.info("metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port)
    return metrics


def build_bridge(settings: BridgeSettings, metrics: Metrics | None = None) -> Bridge:
    _require(settings.kafka_bootstrap, "KAFKA_BOOTSTRAP")
    _require(settings.mqtt_url, "MQTT_URL")
    assert settings.mqtt_url is not None
    password = settings.mqtt_bridge_password
    mqtt = make_mqtt_client(
        settings.bridge_mqtt_client,
        MqttConfig(
            url=settings.mqtt_url,
            username=settings.mqtt_bridge_username,
            password=password.get_secret_value() if password else None,
            client_id=settings.bridge_client_id or f"citysense-bridge-{socket.gethostname()}",
            clean_start=settings.bridge_session_expiry_s == 0,
            session_expiry_s=settings.bridge_session_expiry_s,
            max_unacked_inbound=settings.bridge_max_unacked,
        ),
        manual_ack=True,
    )
    producer = KafkaBus(kafka_config(settings, "citysense-bridge")).producer()
    return Bridge(mqtt, producer, settings.topic_raw, share_group=settings.bridge_share_group,
                  max_batch=settings.bridge_max_batch, metrics=metrics, dlq_topic=settings.topic_dlq,
                  canary_interval_s=settings.bridge_canary_interval_s,
                  canary_timeout_s=settings.bridge_canary_timeout_s)


async def run_bridge(settings: BridgeSettings) -> None:
    await create_topics(settings)
    bridge = build_bridge(settings, metrics_for(settings))
    _on_signals(bridge.request_stop)
    log.info("bridge: MQTT %s -> Kafka %s", settings.mqtt_url, settings.topic_raw)
    await bridge.run()


async def run_normaliser(settings: NormaliserSettings) -> None:
    await create_topics(settings)
    bus = KafkaBus(kafka_config(settings, "citysense-normalise"))
    normaliser = Normaliser.from_settings(bus, settings, metrics_for(settings))
    _on_signals(normaliser.request_stop)
    log.info("normaliser: %s -> %s (+ %s)", settings.topic_raw, settings.topic_readings, settings.topic_dlq)
    await normaliser.run()


async def run_writer(settings: WriterSettings) -> None:
    await create_topics(settings)
    _require(settings.database_url, "DATABASE_URL")
    assert settings.database_url is not None
    pool = await open_pool(settings.database_url.get_secret_value(), max_size=settings.db_pool_size)
    try:
        async with pool.connection() as conn:
            await migrations.require_current(conn)
        writer = Writer(
            KafkaBus(kafka_config(settings, "citysense-writer")), ReadingsSink(pool, settings),
            readings_topic=settings.topic_readings, dlq_topic=settings.topic_dlq,
            group=settings.writer_group, max_records=settings.writer_max_records,
            metrics=metrics_for(settings), checkpoint_interval_s=settings.writer_checkpoint_interval_s,
        )
        _on_signals(writer.request_stop)
        log.info("writer: %s -> database", settings.topic_readings)
        # Partitions ahead and retention (PostgreSQL) or policy reconciliation (TimescaleDB).
        from storage.maintenance import run_periodically

        maintenance_stop = asyncio.Event()
        maintenance = asyncio.create_task(run_periodically(pool, settings, maintenance_stop))
        try:
            await writer.run()
        finally:
            maintenance_stop.set()
            await maintenance
    finally:
        await pool.close()
