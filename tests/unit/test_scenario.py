"""Scenarios as data: the county's seed counts, the registry export, validation."""

from __future__ import annotations

import base64
import hashlib
from collections import Counter
from pathlib import Path

import pytest
from pydantic import ValidationError

from citysense.credentials import device_password
from simulators.scenario import CityScenario, ScaleScenario, load_scenario
from simulators.scenario_registry import city_registry, export_scenario, scale_devices

SITE_KEYS = {"site_id", "kind", "name", "township", "district", "lat", "lon"}
DEVICE_KEYS = {"device_id", "kind", "profile", "network", "site_id", "township", "district", "lat",
               "lon", "report_interval_s", "credential_hash", "metadata"}


def test_county_has_the_seed_counts() -> None:
    sc = load_scenario("county")
    assert isinstance(sc, CityScenario)
    assert len(sc.districts) == 7
    assert len(sc.townships) == 37
    assert len(sc.bridges) == 22
    assert sum(s.piles for s in sc.stations) == 1200
    names = {b.name for b in sc.bridges}
    assert {"渠江四桥", "渠县腾龙高架桥", "三汇公路大桥", "上游村大桥", "英雄大桥"} <= names
    kinds = Counter(d.kind for d in city_registry(sc).devices)
    assert kinds["bridge"] == 22 and kinds["charger"] == 1200


def test_county_export_has_exactly_the_agreed_keys() -> None:
    data = export_scenario("county", "s3cret-for-tests")
    assert set(data) == {"scenario", "seed", "sites", "devices"}
    assert data["scenario"] == "county"
    sites = {s["site_id"]: s for s in data["sites"]}
    assert Counter(s["kind"] for s in sites.values()) == {
        "bridge": 22, "charging_station": 46, "monitoring_point": 118}
    assert len({s["township"] for s in sites.values()}) <= 37
    assert len({s["district"] for s in sites.values()}) == 7
    ids = [d["device_id"] for d in data["devices"]]
    assert len(ids) == len(set(ids))
    for s in data["sites"]:
        assert set(s) == SITE_KEYS
    for d in data["devices"]:
        assert set(d) == DEVICE_KEYS
        assert d["site_id"] is None or d["site_id"] in sites
        assert 30.3 < d["lat"] < 31.4 and 106.5 < d["lon"] < 107.5
        assert not any(c in d["device_id"] for c in ":+#/ ")
    assert Counter(d["network"] for d in data["devices"])["nb-iot"] == 37 + 21 + 400


def test_credential_hash_is_a_mosquitto_pbkdf2_hash_of_the_device_password() -> None:
    secret = "s3cret-for-tests"
    device = export_scenario("county", secret)["devices"][0]
    _, algo, iterations, salt, digest = device["credential_hash"].split("$")
    assert (algo, iterations) == ("7", "101")
    expected = hashlib.pbkdf2_hmac("sha512", device_password(secret, device["device_id"]).encode(),
                                   base64.b64decode(salt), 101, 64)
    assert base64.b64decode(digest) == expected
    assert "credential_hash" not in export_scenario("county", None)["devices"][0]
    assert export_scenario("county", secret) == export_scenario("county", secret)  # reproducible


def test_scale_devices_follow_the_mix() -> None:
    sc = load_scenario("scale")
    assert isinstance(sc, ScaleScenario)
    devices = scale_devices(sc, 100_000)
    assert len(devices) == 100_000 == len({d.device_id for d in devices})
    counts = Counter(d.kind for d in devices)
    total = sum(sc.mix.values())
    for kind, weight in sc.mix.items():
        assert abs(counts[kind] - 100_000 * weight / total) <= 1


def test_bad_scenarios_are_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("type: scale\nname: x\nseed: 1\ndevices: 10\nrate: 5\nduration_s: 1\n"
                   "mix: {air: 1}\nfaults: {duplicate: 0.7, truncated: 0.5}\n")
    with pytest.raises(ValidationError, match="more than 1"):
        load_scenario(str(bad))
    bad.write_text("type: scale\nname: x\nseed: 1\ndevices: 10\nrate: 5\nduration_s: 1\nmix: {toaster: 1}\n")
    with pytest.raises(ValidationError):
        load_scenario(str(bad))
    with pytest.raises(FileNotFoundError):
        load_scenario("atlantis")
    with pytest.raises(ValueError, match="city scenarios"):
        export_scenario("scale")
