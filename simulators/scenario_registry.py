"""A scenario's device registry: sites and devices, exported for the platform to import.

``registry_export(scenario, device_secret)`` returns the JSON-ready dict that
``citysense scenario export <name>`` prints::

    {"scenario", "seed", "sites": [{site_id, kind, name, township, district, lat, lon}],
     "devices": [{device_id, kind, profile, network, site_id, township, district, lat, lon,
                  report_interval_s, credential_hash?, metadata}]}

``credential_hash`` is the Mosquitto ``$7$`` (PBKDF2-SHA512, 101 iterations)
hash of the device's MQTT password; its salt is derived from the secret and
the device id, so the export is reproducible. It is omitted without a secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
from dataclasses import dataclass, field
from typing import Any

from citysense.credentials import device_password
from ingest.profiles import PROFILES
from simulators.scenario import CityScenario, ScaleScenario

ID_PREFIX = {
    "air": "air-", "weather": "aws-", "water": "wq-", "bridge": "brg-",
    "env": "env-", "rain": "rain-", "meter": "mtr-", "charger": "chg-",
}
# Kinds with one monitoring-point site per device, and the site's label.
SITE_LABEL = {
    "env": "环境监测站", "air": "空气微站", "weather": "自动气象站",
    "rain": "山洪雨情监测点", "water": "水质监测断面",
}


@dataclass(frozen=True, slots=True)
class Site:
    site_id: str
    kind: str
    name: str
    township: str
    district: str
    lat: float
    lon: float


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    device_id: str
    kind: str
    township: str = ""
    district: str = ""
    lat: float = 0.0
    lon: float = 0.0
    site_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Registry:
    scenario: str
    seed: int
    sites: tuple[Site, ...]
    devices: tuple[DeviceSpec, ...]


def mosquitto_hash(password: str, salt: bytes) -> str:
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101, 64)
    return f"$7$101${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def credential_hash(secret: str, device_id: str) -> str:
    salt = hmac.new(secret.encode(), f"salt:{device_id}".encode(), hashlib.sha256).digest()[:12]
    return mosquitto_hash(device_password(secret, device_id), salt)


def _near(rng: random.Random, lat: float, lon: float, spread: float) -> tuple[float, float]:
    return round(lat + rng.uniform(-spread, spread), 6), round(lon + rng.uniform(-spread, spread), 6)


def city_registry(sc: CityScenario) -> Registry:
    rng = random.Random(sc.seed)
    towns = {t.name: (district, t) for district, t in sc.townships}
    sites: list[Site] = []
    devices: list[DeviceSpec] = []
    for i, b in enumerate(sc.bridges, start=1):
        district, town = towns[b.township]
        lat, lon = _near(rng, town.lat, town.lon, 0.01)
        site = Site(f"site-brg-{i:02d}", "bridge", b.name, town.name, district, lat, lon)
        sites.append(site)
        devices.append(DeviceSpec(
            f"brg-{i:02d}", "bridge", town.name, district, lat, lon, site.site_id,
            {"bridge": b.name, "name_source": b.source,
             "channels": [m.name for m in PROFILES["bridge"].metrics]},
        ))
    pile = 0
    for i, s in enumerate(sc.stations, start=1):
        district, town = towns[s.township]
        lat, lon = _near(rng, town.lat, town.lon, 0.008)
        site = Site(f"site-chs-{i:03d}", "charging_station", s.name, town.name, district, lat, lon)
        sites.append(site)
        for _ in range(s.piles):
            plat, plon = _near(rng, lat, lon, 0.0002)
            devices.append(DeviceSpec(
                f"chg-{pile:05d}", "charger", town.name, district, plat, plon, site.site_id,
                {"station": s.name, "connectors": 1, "power_kw": s.power_kw,
                 "current": "DC" if s.dc else "AC"},
            ))
            pile += 1
    order = sc.townships
    for kind, count in sc.monitoring.items():
        for j in range(count):
            district, town = order[j % len(order)]
            lat, lon = _near(rng, town.lat, town.lon, 0.02)
            device_id = f"{ID_PREFIX[kind]}{j:04d}"
            meta = device_metadata(kind)
            site_id = None
            if kind in SITE_LABEL:
                site_id = f"site-mp-{device_id}"
                name = f"{town.name}{SITE_LABEL[kind]}{j + 1:02d}"
                sites.append(Site(site_id, "monitoring_point", name, town.name, district, lat, lon))
            devices.append(DeviceSpec(device_id, kind, town.name, district, lat, lon, site_id, meta))
    return Registry(sc.name, sc.seed, tuple(sites), tuple(devices))


def device_metadata(kind: str) -> dict[str, Any]:
    """What the registry keeps of a kind's profile: its description and, for NB-IoT (PSM)
    devices, the sample interval (storage keeps no hourly rollup for hourly samplers)."""
    profile = PROFILES[kind]
    meta: dict[str, Any] = {"description": profile.description}
    if profile.sample_interval_s:
        meta |= {"psm": True, "sample_interval_s": profile.sample_interval_s}
    return meta


def scale_devices(sc: ScaleScenario, devices: int | None = None) -> list[DeviceSpec]:
    """``devices`` ids split by the kind mix (largest remainder), interleaved deterministically."""
    total = devices or sc.devices
    weight = sum(sc.mix.values())
    shares = {k: total * w / weight for k, w in sorted(sc.mix.items())}
    counts = {k: int(v) for k, v in shares.items()}
    for k in sorted(shares, key=lambda k: counts[k] - shares[k])[: total - sum(counts.values())]:
        counts[k] += 1
    meta = {k: device_metadata(k) for k in counts}
    out = [DeviceSpec(f"{ID_PREFIX[k]}L{i:06d}", k, metadata=meta[k])
           for k, n in counts.items() for i in range(n)]
    random.Random(sc.seed).shuffle(out)
    return out


def registry_export(registry: Registry, device_secret: str | None = None) -> dict[str, Any]:
    def device(d: DeviceSpec) -> dict[str, Any]:
        profile = PROFILES[d.kind]
        row: dict[str, Any] = {
            "device_id": d.device_id, "kind": d.kind, "profile": profile.kind,
            "network": profile.network, "site_id": d.site_id, "township": d.township,
            "district": d.district, "lat": d.lat, "lon": d.lon,
            "report_interval_s": profile.report_interval_s,
        }
        if device_secret:
            row["credential_hash"] = credential_hash(device_secret, d.device_id)
        row["metadata"] = d.metadata
        return row

    return {
        "scenario": registry.scenario,
        "seed": registry.seed,
        "sites": [
            {"site_id": s.site_id, "kind": s.kind, "name": s.name, "township": s.township,
             "district": s.district, "lat": s.lat, "lon": s.lon}
            for s in registry.sites
        ],
        "devices": [device(d) for d in registry.devices],
    }


def export_scenario(name_or_path: str, device_secret: str | None = None) -> dict[str, Any]:
    """The registry export of a city scenario by name or path (``citysense scenario export``)."""
    from simulators.scenario import load_scenario

    sc = load_scenario(name_or_path)
    if not isinstance(sc, CityScenario):
        raise ValueError(f"scenario {name_or_path!r} is a {sc.type} scenario; only city scenarios "
                         "have a registry (scale devices are generated: kind prefix + 'L' + number)")
    return registry_export(city_registry(sc), device_secret)
