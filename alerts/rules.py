"""Rules as data: the pydantic models of a rule file (validated at the edge).

A rule names a selector (which devices), one condition (what to compute per
device), graded thresholds on China's four-level warning scale (blue IV <
yellow III < orange II < red I), a ``for`` duration, a clear threshold
(hysteresis), labels, receivers and a repeat interval. Durations are seconds
or ``30s``/``5m``/``6h``/``1d``.
"""

from __future__ import annotations

import re
from enum import IntEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from ingest.profiles import PROFILES


class Grade(IntEnum):
    """The alerts table stores the number: 1 is the highest level."""

    RED = 1
    ORANGE = 2
    YELLOW = 3
    BLUE = 4


GRADE_NAMES = {"red": Grade.RED, "orange": Grade.ORANGE, "yellow": Grade.YELLOW, "blue": Grade.BLUE}
GRADE_LABEL = {g: name for name, g in GRADE_NAMES.items()}
HEALTH_FIELDS = ("battery_v", "rsrp_dbm", "sinr_db", "ce_level")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def _seconds(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or like 30s, 5m, 6h, 1d")
    if isinstance(value, int | float):
        return float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a duration (seconds, or like 30s, 5m, 6h, 1d)")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


Duration = Annotated[float, BeforeValidator(_seconds), Field(ge=0)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Selector(_Model):
    """Devices a rule applies to: every field given must match (empty: all devices)."""

    kind: list[str] = Field(default_factory=list)
    profile: list[str] = Field(default_factory=list)
    site: list[str] = Field(default_factory=list)
    district: list[str] = Field(default_factory=list)
    township: list[str] = Field(default_factory=list)
    device_ids: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)


class Threshold(_Model):
    type: Literal["threshold"]
    metric: str
    direction: Literal["above", "below"] = "above"


class RateOfChange(_Model):
    """(last - first) over the readings in ``window``, scaled to change per ``per``."""

    type: Literal["rate"]
    metric: str
    window: Duration
    per: Duration = 86400.0
    direction: Literal["above", "below"] = "above"
    min_points: int = Field(default=2, ge=2)


class Aggregate(_Model):
    type: Literal["aggregate"]
    metric: str
    fn: Literal["mean", "max", "min", "rms", "sum"]
    window: Duration
    direction: Literal["above", "below"] = "above"


class StateDuration(_Model):
    """Seconds a charger connector has been in one of ``states`` (thresholds are seconds)."""

    type: Literal["state_duration"]
    states: list[str] = Field(min_length=1)
    direction: Literal["above"] = "above"


class HealthCondition(_Model):
    type: Literal["health"]
    field: Literal["battery_v", "rsrp_dbm", "sinr_db", "ce_level"]
    direction: Literal["above", "below"] = "below"


class Silence(_Model):
    """Late after interval + grace, offline after twice that, from the last uplink.

    grace = max(``grace``, ``grace_ratio`` x interval); the interval is the
    device's registry ``report_interval_s``, else its profile's.
    """

    type: Literal["silence"]
    grace: Duration = 0.0
    grace_ratio: float = Field(default=0.1, ge=0)
    late_grade: Literal["blue", "yellow", "orange", "red"] = "yellow"
    offline_grade: Literal["blue", "yellow", "orange", "red"] = "orange"
    include_never_seen: bool = True


Condition = Annotated[
    Threshold | RateOfChange | Aggregate | StateDuration | HealthCondition | Silence,
    Field(discriminator="type"),
]


class Receiver(_Model):
    """A webhook. ``url`` or ``url_env`` (an environment variable holding it; unset: skipped).
    The HMAC secret is read from the environment variable ``secret_env``, never the file."""

    name: str = Field(min_length=1)
    url: str | None = None
    url_env: str | None = None
    secret_env: str = "CITYSENSE_ALERT_WEBHOOK_SECRET"  # noqa: S105 (a variable name)
    timeout_s: float = Field(default=5.0, gt=0)


class RateLimit(_Model):
    """At most ``count`` notifications of the rule (all devices together) per ``per``."""

    count: int = Field(ge=1)
    per: Duration = Field(gt=0)


class Rule(_Model):
    id: str = Field(min_length=1, max_length=100, pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    name: str = Field(min_length=1)
    enabled: bool = True
    selector: Selector = Field(default_factory=Selector)
    condition: Condition
    grades: dict[Literal["blue", "yellow", "orange", "red"], float] = Field(default_factory=dict)
    clear: float | None = None
    for_: Duration = Field(default=0.0, alias="for")
    labels: dict[str, str] = Field(default_factory=dict)
    receivers: list[str] = Field(default_factory=list)
    repeat_interval: Duration = 4 * 3600.0
    rate_limit: RateLimit | None = None
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @property
    def metric(self) -> str | None:
        c = self.condition
        if isinstance(c, Threshold | RateOfChange | Aggregate):
            return c.metric
        if isinstance(c, HealthCondition):
            return f"health.{c.field}"
        return None

    @model_validator(mode="after")
    def _coherent(self) -> Rule:
        c = self.condition
        if isinstance(c, Silence):
            if self.grades:
                raise ValueError("grades: a silence rule takes late_grade/offline_grade, not grades")
            return self
        if not self.grades:
            raise ValueError("grades: give at least one of blue, yellow, orange, red")
        above = c.direction == "above"
        ordered = sorted(self.grades.items(), key=lambda kv: -GRADE_NAMES[kv[0]])  # blue first
        values = [v for _, v in ordered]
        if values != sorted(values, reverse=not above) or len(set(values)) != len(values):
            trend = "increasing" if above else "decreasing"
            raise ValueError(f"grades: must be strictly {trend} from blue to red "
                             f"({c.direction} the threshold): {dict(ordered)}")
        if self.clear is not None and (self.clear > values[0] if above else self.clear < values[0]):
            raise ValueError(f"clear: {self.clear} is not on the safe side of the lowest grade ({values[0]})")
        if isinstance(c, Threshold | RateOfChange | Aggregate):
            profiles = [PROFILES[k] for k in (self.selector.kind or self.selector.profile) if k in PROFILES]
            candidates = profiles or list(PROFILES.values())
            if not any(p.metric(c.metric) for p in candidates):
                where = ", ".join(p.kind for p in candidates)
                raise ValueError(f"metric: {c.metric!r} is produced by no device profile ({where})")
        return self

    def thresholds(self) -> list[tuple[Grade, float]]:
        """(grade, threshold) from the highest grade (red) down."""
        return sorted(((GRADE_NAMES[k], v) for k, v in self.grades.items()), key=lambda gv: gv[0])


class RuleFile(_Model):
    receivers: list[Receiver] = Field(default_factory=list)
    rules: list[Rule] = Field(default_factory=list)



Loc = tuple[str | int, ...]


def cross_check(rules: list[tuple[int, Rule]], receivers: list[Receiver]) -> list[tuple[Loc, str]]:
    """Problems between valid rules (duplicate ids, unknown receivers or kinds), each with
    the location of the field at fault; ``rules`` are (index in the file, rule)."""
    problems: list[tuple[Loc, str]] = []
    seen: set[str] = set()
    known = {r.name for r in receivers}
    for i, rule in rules:
        if rule.id in seen:
            problems.append((("rules", i, "id"), f"duplicate rule id {rule.id!r}"))
        seen.add(rule.id)
        missing = [n for n in rule.receivers if n not in known]
        if missing:
            problems.append((("rules", i, "receivers"), f"unknown receivers: {', '.join(missing)}"))
        for kind in rule.selector.kind:
            if kind not in PROFILES:
                problems.append((("rules", i, "selector", "kind"),
                                 f"kind {kind!r} is no device profile ({', '.join(PROFILES)})"))
    return problems


def stored_definition(rule: Rule, receivers: list[Receiver]) -> dict[str, Any]:
    """The rule as stored in the database: its fields plus its receivers' specs, so a
    stored rule is self-contained."""
    out = rule.model_dump(mode="json", by_alias=True)
    out["receiver_specs"] = [r.model_dump(mode="json") for r in receivers if r.name in rule.receivers]
    return out


def from_definition(definition: dict[str, Any]) -> tuple[Rule, list[Receiver]]:
    data = dict(definition)
    specs = data.pop("receiver_specs", [])
    return Rule.model_validate(data), [Receiver.model_validate(s) for s in specs]
