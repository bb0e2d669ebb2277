"""Bodies of the alert, incident and silence routes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from api.models import AlertOut


class AlertPage(BaseModel):
    items: list[AlertOut]
    next_cursor: str | None


class TransitionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    seq: int
    action: str
    from_state: str | None
    to_state: str
    grade: int
    acknowledged: bool
    value: float | None
    device_time: datetime | None
    actor: str
    reason: str
    at: datetime


class AlertDetail(BaseModel):
    alert: AlertOut
    transitions: list[TransitionOut]


class IncidentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    incident_id: int
    site_id: str
    state: str
    grade: int
    first_seen: datetime
    last_seen: datetime
    member_count: int
    acknowledged: bool
    acknowledged_by: str | None
    acknowledged_at: datetime | None
    closed_at: datetime | None


class IncidentPage(BaseModel):
    items: list[IncidentOut]
    next_cursor: str | None


class IncidentDetail(BaseModel):
    incident: IncidentOut
    alerts: list[AlertOut]


class ActionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(default="", max_length=500)


class SilenceIn(BaseModel):
    """Hold back notifications of matching alerts for a time window."""

    model_config = ConfigDict(extra="forbid")
    selector: dict[str, list[str]] = Field(
        description="kind, profile, site, district, township, device_ids, tags, rule_ids: lists of values")
    starts_at: AwareDatetime | None = None
    ends_at: AwareDatetime
    reason: str = Field(min_length=1, max_length=500)

    @model_validator(mode="after")
    def _check(self) -> SilenceIn:
        allowed = {"kind", "profile", "site", "district", "township", "device_ids", "tags", "rule_ids"}
        unknown = set(self.selector) - allowed
        if unknown:
            raise ValueError(f"selector: unknown fields {sorted(unknown)}; allowed {sorted(allowed)}")
        if not any(self.selector.values()):
            raise ValueError("selector: name at least one value (a silence of everything is refused)")
        return self


class SilenceOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    silence_id: int
    selector: dict[str, Any]
    starts_at: datetime
    ends_at: datetime
    created_by: str
    reason: str
    created_at: datetime
    expired_at: datetime | None
