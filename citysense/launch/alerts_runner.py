"""Build and run the alert engine and the webhook delivery worker until SIGTERM/SIGINT."""

from __future__ import annotations

import logging

from alerts.delivery import Delivery
from alerts.engine import AlertEngine
from alerts.metrics import AlertMetrics
from alerts.settings import AlertSettings
from brokers.kafka import KafkaBus, kafka_config
from citysense.launch.runners import _on_signals, _require, create_topics, metrics_for
from citysense.settings import load_settings
from storage import migrations
from storage.db import open_pool

log = logging.getLogger("citysense")


async def run_engine(settings: AlertSettings | None = None) -> None:
    settings = settings or load_settings(AlertSettings)
    await create_topics(settings)
    _require(settings.database_url, "DATABASE_URL")
    assert settings.database_url is not None
    pool = await open_pool(settings.database_url.get_secret_value(), max_size=3)
    try:
        async with pool.connection() as conn:
            await migrations.require_current(conn)
        engine = AlertEngine(KafkaBus(kafka_config(settings, "citysense-alerts")), pool, settings,
                             metrics=metrics_for(settings), group_wait_s=settings.alerts_group_wait_s,
                             group_interval_s=settings.alerts_group_interval_s)
        _on_signals(engine.request_stop)
        log.info("alert engine: %s -> alerts, %s", settings.topic_readings, settings.topic_alerts)
        await engine.run()
    finally:
        await pool.close()


async def run_delivery(settings: AlertSettings | None = None) -> None:
    settings = settings or load_settings(AlertSettings)
    _require(settings.database_url, "DATABASE_URL")
    assert settings.database_url is not None
    pool = await open_pool(settings.database_url.get_secret_value(), max_size=2)
    try:
        delivery = Delivery(pool, settings, AlertMetrics(metrics_for(settings).registry))
        _on_signals(delivery.request_stop)
        log.info("alert delivery: outbox -> webhooks")
        await delivery.run()
    finally:
        await pool.close()
