"""Prometheus metrics, built on an injected registry (never the global one).

One ``Metrics`` object per process, passed to the stages that report into
it; tests give each case a fresh ``CollectorRegistry``. Label sets are
fixed and small: stage names, outcomes and reason codes, never device ids.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

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

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        """Expose ``/metrics`` over HTTP in a daemon thread."""
        start_http_server(port, addr=addr, registry=self.registry)
