"""What the MQTT broker says about itself (``$SYS``), re-exported as the bridge's metrics.

Mosquitto acknowledges an uplink to the device and then, if the bridge's queue is full, drops it
(``max_queued_messages`` / ``max_queued_bytes``); the only trace is its ``$SYS`` drop counter. The
bridge subscribes to that counter with its own account and exports it unchanged, as a counter
(the broker's total since it started: a broker restart is a counter reset, which Prometheus'
``increase()`` handles; a bridge restart changes nothing), so an alert can fire on any drop.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

DROPPED = "$SYS/broker/publish/messages/dropped"
HEAP = "$SYS/broker/heap/current"
STORED_BYTES = "$SYS/broker/store/messages/bytes"
SYS_TOPICS = (DROPPED, HEAP, STORED_BYTES)


class BrokerStats(Collector):
    """The latest ``$SYS`` values; a Prometheus collector (nothing is exported before the first)."""

    def __init__(self) -> None:
        self.dropped: int | None = None
        self.heap_bytes: int | None = None
        self.stored_bytes: int | None = None

    def update(self, topic: str, payload: bytes) -> None:
        try:
            value = int(payload.split()[0]) if payload.strip() else 0
        except ValueError:
            log.debug("unexpected %s payload %r", topic, payload[:40])
            return
        if topic == DROPPED:
            before = self.dropped
            self.dropped = value
            if before is None and value:
                log.warning("the MQTT broker has dropped %d acknowledged messages since it started "
                            "(a bridge queue overflowed)", value)
            elif before is not None and value > before:
                log.warning("the MQTT broker dropped %d acknowledged messages (total %d): a bridge "
                            "queue is full", value - before, value)
        elif topic == HEAP:
            self.heap_bytes = value
        elif topic == STORED_BYTES:
            self.stored_bytes = value

    def collect(self) -> Iterator[Metric]:
        if self.dropped is not None:
            yield CounterMetricFamily(
                "citysense_mqtt_broker_dropped_messages",
                "Messages the MQTT broker acknowledged and then dropped (a full client queue), "
                "as it reports in $SYS since it started", value=self.dropped)
        if self.heap_bytes is not None:
            yield GaugeMetricFamily("citysense_mqtt_broker_heap_bytes",
                                    "Heap the MQTT broker uses ($SYS)", value=self.heap_bytes)
        if self.stored_bytes is not None:
            yield GaugeMetricFamily("citysense_mqtt_broker_stored_bytes",
                                    "Payload bytes the MQTT broker holds ($SYS)", value=self.stored_bytes)
