"""Locust operators for the query API (run by ``api_bench.py``, or by hand)::

    CITYSENSE_BENCH_KEY=csk_... CITYSENSE_BENCH_DEVICES=bench-000000,bench-000001 \\
        locust -f loadtests/api_locust.py --headless -u 50 -r 25 -t 60s --host http://127.0.0.1:8080

Each operator, between short pauses, looks at what an operator's screen asks for:
the overview, a page of devices, one device's latest values, a device's 24-hour
series in 1-minute buckets, the open alerts, and now and then the county map.
"""

from __future__ import annotations

import os
import random
from datetime import UTC, datetime, timedelta

from locust import HttpUser, between, task


class Operator(HttpUser):
    wait_time = between(0.2, 1.0)

    def on_start(self) -> None:
        self.client.headers["X-API-Key"] = os.environ["CITYSENSE_BENCH_KEY"]
        self.devices = os.environ["CITYSENSE_BENCH_DEVICES"].split(",")
        self.districts = os.environ.get("CITYSENSE_BENCH_DISTRICTS", "").split(",")

    @task(3)
    def overview(self) -> None:
        self.client.get("/api/v1/overview", name="overview")

    @task(3)
    def device_page(self) -> None:
        params = {"limit": 100}
        if self.districts[0] and random.random() < 0.5:
            params["district"] = random.choice(self.districts)  # type: ignore[assignment]
        self.client.get("/api/v1/devices", params=params, name="devices page")

    @task(3)
    def latest(self) -> None:
        self.client.get(f"/api/v1/devices/{random.choice(self.devices)}/latest", name="latest")

    @task(2)
    def series_24h(self) -> None:
        to = datetime.now(UTC).replace(second=0, microsecond=0)
        params = {"metric": "pm25", "from": (to - timedelta(hours=24)).isoformat(), "to": to.isoformat(),
                  "bucket": "60", "agg": "avg"}
        self.client.get(f"/api/v1/devices/{random.choice(self.devices)}/series", params=params,
                        name="series 24h/1m")

    @task(1)
    def county_map(self) -> None:
        self.client.get("/api/v1/map", params={"cell_deg": 0.02}, name="map (all devices)")

    @task(2)
    def alerts(self) -> None:
        self.client.get("/api/v1/alerts", params={"state": "open", "limit": 50}, name="alerts open")
