"""Prometheus metrics, built on an injected registry (never the global one).

One ``Metrics`` object per process, passed to the stages that report into
it; tests give each case a fresh ``CollectorRegistry``. Label sets are
fixed and small: stage names, outcomes and reason codes, never device ids.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_BATCH_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


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

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        """Expose ``/metrics`` over HTTP in a daemon thread."""
        start_http_server(port, addr=addr, registry=self.registry)
