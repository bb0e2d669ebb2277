"""Scenarios as data: YAML files under ``simulators/scenarios/``, validated once with pydantic.

Two shapes: ``type: city`` (places, sites and device counts: the 渠县 county)
and ``type: scale`` (a device count, a kind mix and a target rate, for load
tests). Both carry fault ratios. :func:`load_scenario` accepts a bundled
name (``county``, ``scale``) or a path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ingest.profiles import PROFILES

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
FAULT_KINDS = (
    "duplicate", "out_of_order", "clock_skew", "malformed", "truncated",
    "unknown_device", "oversize", "reconnect_burst",
)
Ratio = Annotated[float, Field(ge=0.0, le=1.0)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FaultRatios(_Model):
    """Probability per uplink of each fault (they are exclusive; the sum must be <= 1)."""

    duplicate: Ratio = 0.0
    out_of_order: Ratio = 0.0
    clock_skew: Ratio = 0.0
    malformed: Ratio = 0.0
    truncated: Ratio = 0.0
    unknown_device: Ratio = 0.0
    oversize: Ratio = 0.0
    reconnect_burst: Ratio = 0.0

    @model_validator(mode="after")
    def _sum(self) -> FaultRatios:
        if sum(self.as_dict().values()) > 1.0:
            raise ValueError("fault ratios add up to more than 1")
        return self

    def as_dict(self) -> dict[str, float]:
        return {k: float(getattr(self, k)) for k in FAULT_KINDS}


class LatLon(_Model):
    lat: Annotated[float, Field(ge=-90, le=90)]
    lon: Annotated[float, Field(ge=-180, le=180)]


class Township(_Model):
    name: str
    lat: float
    lon: float


class District(_Model):
    name: str
    townships: list[Township] = Field(min_length=1)


class Bridge(_Model):
    name: str
    township: str
    source: Literal["seed", "seed-built", "generated"] = "generated"


class Station(_Model):
    name: str
    township: str
    piles: Annotated[int, Field(ge=1)]
    power_kw: Annotated[float, Field(gt=0)]
    dc: bool = False


class BridgeEventSpec(_Model):
    bridge: str
    kind: Literal["crack_growth", "abnormal_deflection", "vibration"]
    start_h: Annotated[float, Field(ge=0)]
    duration_h: Annotated[float, Field(gt=0)]
    magnitude: float


class CityScenario(_Model):
    type: Literal["city"]
    name: str
    seed: int
    center: LatLon
    districts: list[District] = Field(min_length=1)
    bridges: list[Bridge] = []
    stations: list[Station] = []
    monitoring: dict[str, Annotated[int, Field(ge=0)]] = {}
    events: list[BridgeEventSpec] = []
    faults: FaultRatios = FaultRatios()

    @model_validator(mode="after")
    def _references(self) -> CityScenario:
        towns = {t.name for d in self.districts for t in d.townships}
        if len(towns) != sum(len(d.townships) for d in self.districts):
            raise ValueError("township names must be unique")
        refs = [(b.name, b.township) for b in self.bridges]
        refs += [(s.name, s.township) for s in self.stations]
        for name, township in refs:
            if township not in towns:
                raise ValueError(f"{name}: unknown township {township!r}")
        bridges = {b.name for b in self.bridges}
        for e in self.events:
            if e.bridge not in bridges:
                raise ValueError(f"event on unknown bridge {e.bridge!r}")
        for kind in self.monitoring:
            if kind not in PROFILES or kind in ("bridge", "charger"):
                raise ValueError(f"monitoring kind {kind!r} is not a monitoring profile")
        return self

    @property
    def townships(self) -> list[tuple[str, Township]]:
        return [(d.name, t) for d in self.districts for t in d.townships]


class ScaleScenario(_Model):
    type: Literal["scale"]
    name: str
    seed: int
    devices: Annotated[int, Field(ge=1)]
    rate: Annotated[float, Field(gt=0)]
    duration_s: Annotated[float, Field(gt=0)]
    qos: Literal[0, 1] = 0
    connections: Annotated[int, Field(ge=1, le=256)] = 8
    mix: dict[str, Annotated[float, Field(ge=0)]]
    faults: FaultRatios = FaultRatios()

    @model_validator(mode="after")
    def _mix(self) -> ScaleScenario:
        unknown = set(self.mix) - set(PROFILES)
        if unknown or not sum(self.mix.values()):
            raise ValueError(f"mix needs known kinds with a positive total (unknown: {unknown})")
        return self


Scenario = CityScenario | ScaleScenario


def scenario_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    bundled = SCENARIO_DIR / f"{name_or_path}.yaml"
    if not bundled.exists():
        known = ", ".join(sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml")))
        raise FileNotFoundError(f"no scenario {name_or_path!r} (bundled: {known})")
    return bundled


def load_scenario(name_or_path: str) -> Scenario:
    data = yaml.safe_load(scenario_path(name_or_path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"scenario {name_or_path!r} is not a mapping")
    if data.get("type") == "scale":
        return ScaleScenario.model_validate(data)
    return CityScenario.model_validate(data)
