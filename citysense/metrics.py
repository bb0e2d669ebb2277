"""Prometheus metrics, built on an injected registry (never the global one).

One ``Metrics`` object per process, passed to the stages that report into
it; tests give each case a fresh ``CollectorRegistry``. Label sets are
fixed and small: stage names, outcomes and reason codes, never device ids.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_BATCH_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_SIZE_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10_000, 20_000)
# End-to-end latency: fine below the 2 s objective (a bucket edge, so "p99 < 2 s" is exact).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.25, 1.5,
                   2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None, prefix: str = "citysense") -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.records = Counter(
            f"{prefix}_records", "Records handled, by stage and outcome", ["stage", "outcome"], registry=r
        )
        self.dead_letters = Counter(
            f"{prefix}_dead_letters", "Messages dead-lettered, by stage and reason", ["stage", "reason"],
            registry=r,
        )
        self.batch_seconds = Histogram(
            f"{prefix}_batch_seconds", "Time to handle a batch and commit it, by stage", ["stage"],
            buckets=_BATCH_BUCKETS, registry=r,
        )
        self.retries = Counter(
            f"{prefix}_retries", "Retriable failures retried, by stage", ["stage"], registry=r
        )
        # Logging (citysense/logs.py): every WARNING-or-worse line, and those dropped as repeats.
        self.log_messages = Counter(
            f"{prefix}_log_messages", "WARNING-or-worse log records, by level and logger",
            ["level", "logger"], registry=r,
        )
        self.log_suppressed = Counter(
            f"{prefix}_log_suppressed", "Repeated log records dropped by the rate limit, by level and logger",
            ["level", "logger"], registry=r,
        )
        # MQTT connection of a stage (the bridge): every change, with the broker's reason.
        self.mqtt_connection_changes = Counter(
            f"{prefix}_mqtt_connection_changes", "MQTT connects and disconnects, by stage, event and reason",
            ["stage", "event", "reason"], registry=r,
        )
        self.mqtt_connected = Gauge(
            f"{prefix}_mqtt_connected", "1 while the stage's MQTT connection is up", ["stage"], registry=r,
        )
        # The bridge's canary through its shared subscription (ingest/canary.py).
        self.bridge_canaries = Counter(
            f"{prefix}_bridge_canaries", "Bridge canaries by outcome (sent, returned, lost, unsent, echoed)",
            ["outcome"], registry=r,
        )
        self.messages = Counter(
            f"{prefix}_messages",
            "Messages received (MQTT), consumed or produced (Kafka), by stage, topic and outcome",
            ["stage", "topic", "outcome"], registry=r,
        )
        self.batch_records = Histogram(
            f"{prefix}_batch_records", "Records per handled batch, by stage", ["stage"],
            buckets=_SIZE_BUCKETS, registry=r,
        )
        self.consumer_lag = Gauge(
            f"{prefix}_consumer_lag_records",
            "Records behind the partition's high watermark after the last fetch",
            ["stage", "topic", "partition"], registry=r,
        )
        self.consumer_lag_age = Gauge(
            f"{prefix}_consumer_lag_seconds",
            "Age (now - Kafka timestamp) of the last record handled, per partition",
            ["stage", "topic", "partition"], registry=r,
        )
        self.db_write_seconds = Histogram(
            f"{prefix}_db_write_seconds", "Database transaction time, by operation", ["operation"],
            buckets=_BATCH_BUCKETS, registry=r,
        )
        self.receive_to_commit = Histogram(
            f"{prefix}_receive_to_commit_seconds",
            "Uplinks: bridge receive time (carried in every record) to the database commit of "
            "their readings", buckets=LATENCY_BUCKETS, registry=r,
        )

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        """Expose ``/metrics`` over HTTP in a daemon thread."""
        start_http_server(port, addr=addr, registry=self.registry)
