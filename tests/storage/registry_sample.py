"""A small exported registry in the `citysense scenario export` format."""

from __future__ import annotations

import json
from typing import Any


def sample_registry() -> dict[str, Any]:
    sites = [
        {"site_id": "bridge-01", "kind": "bridge", "name": "Old Bridge", "township": "Ashby",
         "district": "North", "lat": 52.1, "lon": -1.2},
        {"site_id": "cs-01", "kind": "charging_station", "name": "Market Square", "township": "Burton",
         "district": "South", "lat": 52.0, "lon": -1.1},
    ]
    devices = [
        {"device_id": "air-1", "kind": "air", "profile": "air-cat1", "network": "lte-cat1", "site_id": None,
         "township": "Ashby", "district": "North", "lat": 52.11, "lon": -1.21, "report_interval_s": 60,
         "metadata": {"height_m": 3}},
        {"device_id": "air-2", "kind": "air", "profile": "air-cat1", "network": "lte-cat1", "site_id": None,
         "township": "Burton", "district": "South", "lat": 52.01, "lon": -1.11, "report_interval_s": 60,
         "metadata": {}},
        {"device_id": "strain-1", "kind": "bridge_strain", "profile": "strain-nbiot", "network": "nb-iot",
         "site_id": "bridge-01", "township": "Ashby", "district": "North", "lat": 52.1, "lon": -1.2,
         "report_interval_s": 900, "credential_hash": "sha256:abc", "metadata": {"span": 2}},
        {"device_id": "ev-1", "kind": "charger", "profile": "ocpp-like", "network": "lte-cat1",
         "site_id": "cs-01", "township": "Burton", "district": "South", "lat": 52.0, "lon": -1.1,
         "report_interval_s": 300, "metadata": {"connectors": 2}},
    ]
    return {"scenario": "county", "seed": 7, "sites": sites, "devices": devices}


def sample_json() -> str:
    return json.dumps(sample_registry())
