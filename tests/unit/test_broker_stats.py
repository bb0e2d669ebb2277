"""The broker's $SYS counters, re-exported by the bridge."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry

from ingest.broker_stats import DROPPED, HEAP, BrokerStats


def test_nothing_is_exported_before_the_broker_has_said_anything() -> None:
    registry = CollectorRegistry()
    registry.register(BrokerStats())
    assert registry.get_sample_value("citysense_mqtt_broker_dropped_messages_total") is None


def test_the_drop_counter_mirrors_the_broker_and_warns_on_every_increase(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stats = BrokerStats()
    registry = CollectorRegistry()
    registry.register(stats)
    with caplog.at_level(logging.WARNING):
        stats.update(DROPPED, b"0")
        assert not caplog.records
        stats.update(DROPPED, b"250")
        stats.update(HEAP, b"1048576")
    assert registry.get_sample_value("citysense_mqtt_broker_dropped_messages_total") == 250
    assert registry.get_sample_value("citysense_mqtt_broker_heap_bytes") == 1048576
    assert "dropped 250" in caplog.text
    stats.update(DROPPED, b"not a number")  # ignored, the last value stays
    assert stats.dropped == 250
