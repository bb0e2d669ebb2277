"""Settings of the alert engine and the webhook delivery worker (``CITYSENSE_`` prefix)."""

from __future__ import annotations

from pydantic import Field

from citysense.settings import CommonSettings


class AlertSettings(CommonSettings):
    alerts_group: str = "citysense-alerts"
    alerts_max_records: int = Field(default=5000, ge=1)
    # State, transitions and outbox commit together at most this often (then the offsets).
    alerts_checkpoint_interval_s: float = Field(default=0.5, ge=0)
    # How often the engine polls the rules version (rules reload without a restart).
    alerts_rules_poll_s: float = Field(default=5.0, gt=0)
    # Alerts at one site whose first crossing falls within this window share one incident.
    alerts_incident_window_s: float = Field(default=600.0, ge=0)
    # More than ``flap_max`` transitions within ``flap_window_s``: the alert is flapping,
    # one notification says so and the rest are held back until it settles.
    alerts_flap_window_s: float = Field(default=1800.0, gt=0)
    alerts_flap_max: int = Field(default=4, ge=2)
    # Alertmanager's group_wait: a notification waits this long, and an alert resolved
    # meanwhile sends nothing (neither fired nor resolved).
    alerts_group_wait_s: float = Field(default=30.0, ge=0)
    # Alertmanager's group_interval: after a group's (receiver, rule and site, or site for
    # incidents) first notification, the next ones go out together at most this often.
    alerts_group_interval_s: float = Field(default=300.0, ge=0)
    # Webhook delivery: bounded attempts, exponential backoff with full jitter.
    deliver_max_attempts: int = Field(default=8, ge=1)
    deliver_backoff_base_s: float = Field(default=1.0, gt=0)
    deliver_backoff_max_s: float = Field(default=300.0, gt=0)
    deliver_poll_s: float = Field(default=0.5, gt=0)
    deliver_batch: int = Field(default=100, ge=1)
