"""Repeated warnings are rate-limited with a count; everything is still counted in metrics."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry

from citysense.logs import RepeatFilter
from citysense.metrics import Metrics


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(msg: str, *args: object, level: int = logging.ERROR, name: str = "aiokafka") -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_a_flood_of_one_error_becomes_one_line_per_window_with_the_count() -> None:
    clock = Clock()
    registry = CollectorRegistry()
    f = RepeatFilter(window_s=10.0, clock=clock)
    f.metrics = Metrics(registry)
    template = "Unable connect to node with id %s: %s"
    passed = []
    for i in range(4000):  # one second of a Kafka outage under load
        clock.now += 0.00025
        r = record(template, 1, f"attempt {i}")
        if f.filter(r):
            passed.append(r)
    assert len(passed) == 1
    clock.now += 10.0
    r = record(template, 1, "again")
    assert f.filter(r)
    assert "[3999 more like this suppressed in 11s]" in r.getMessage()
    labels = {"level": "ERROR", "logger": "aiokafka"}
    assert registry.get_sample_value("citysense_log_messages_total", labels) == 4001
    assert registry.get_sample_value("citysense_log_suppressed_total", labels) == 3999


def test_other_messages_loggers_and_info_lines_are_not_held_back() -> None:
    clock = Clock()
    f = RepeatFilter(window_s=10.0, clock=clock)
    assert f.filter(record("a %s", 1))
    assert f.filter(record("b %s", 1))
    assert f.filter(record("a %s", 1, name="ingest.bridge"))
    assert f.filter(record("a %s", 1, level=logging.WARNING))
    assert not f.filter(record("a %s", 2))
    for _ in range(100):
        assert f.filter(record("MQTT connected to %s", "x", level=logging.INFO))
