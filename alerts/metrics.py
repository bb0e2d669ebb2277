"""The alert engine's and delivery worker's Prometheus metrics (on an injected registry)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class AlertMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry if registry is not None else CollectorRegistry()
        self.evaluations = Counter("citysense_alert_evaluations", "Rule evaluations (rule x observation)",
                                   registry=r)
        self.transitions = Counter("citysense_alert_transitions", "Alert transitions recorded",
                                   ["action", "grade", "condition"], registry=r)
        self.bad_records = Counter("citysense_alert_bad_records", "Readings-topic records not decodable",
                                   registry=r)
        self.lag = Gauge("citysense_alert_engine_lag_seconds",
                         "Clock minus the newest evaluated batch's received time", registry=r)
        self.notifications = Counter("citysense_alert_notification_attempts",
                                     "Webhook delivery attempts by outcome", ["outcome"], registry=r)
        self.outbox_depth = Gauge("citysense_alert_outbox_depth", "Pending webhook deliveries", registry=r)
        self.outbox_age = Gauge("citysense_alert_outbox_oldest_seconds",
                                "Age of the oldest pending webhook delivery", registry=r)
        self.published = Counter("citysense_alert_transitions_published",
                                 "Transitions produced to the alerts topic", registry=r)
