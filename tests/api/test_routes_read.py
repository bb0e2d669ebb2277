"""Every read route on the populated county, and its 404s and 422s."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.api.conftest import Api

pytestmark = pytest.mark.services
V1 = "/api/v1"


def test_health_ready_metrics_openapi(api: Api) -> None:
    with api.client(None) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.get("/readyz").json() == {"status": "ok", "database": "ok", "kafka": "ok"}
        c.get(f"{V1}/overview")  # a 401, counted
        metrics = c.get("/metrics").text
        print(metrics)
        assert 'citysense_api_requests_total{method="GET",route="/api/v1/overview",status="401"}' in metrics
        spec = c.get("/openapi.json").json()
        assert "/api/v1/devices/{device_id}/series" in spec["paths"]


def test_overview_counts(api: Api) -> None:
    with api.client() as c:
        o = c.get(f"{V1}/overview").json()
    assert o["totals"] == {"online": 1311, "late": 1, "offline": 428, "total": 1740}
    assert o["open_alerts_by_grade"] == {"red": 1, "orange": 1, "yellow": 1, "blue": 1}
    assert o["chargers"]["available"] == 600 and o["chargers"]["faulted"] == 300
    assert o["bridges_by_grade"]["red"] == 1 and o["bridges_by_grade"]["yellow"] == 1
    assert o["bridges_by_grade"]["none"] == 20
    assert o["readings_recent"] > 22 * 60 * 3


def test_device_list_filters_and_cursor(api: Api) -> None:
    with api.client() as c:
        seen: list[str] = []
        cursor = None
        while True:
            params = {"kind": "bridge", "limit": 5, **({"cursor": cursor} if cursor else {})}
            page = c.get(f"{V1}/devices", params=params).json()
            seen += [d["device_id"] for d in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert len(seen) == 22 and seen == sorted(seen) and len(set(seen)) == 22
        offline = c.get(f"{V1}/devices", params={"status": "offline", "kind": "meter", "limit": 500}).json()
        assert len(offline["items"]) == 399
        late = c.get(f"{V1}/devices", params={"status": "late"}).json()["items"]
        assert [d["device_id"] for d in late] == [api.county.late]
        q = c.get(f"{V1}/devices", params={"q": "BRG-0", "district": "渠江片区"}).json()["items"]
        assert q and all(d["device_id"].startswith("brg-0") and d["district"] == "渠江片区" for d in q)
        site = c.get(f"{V1}/devices", params={"site": "site-brg-01"}).json()["items"]
        assert [d["device_id"] for d in site] == ["brg-01"]
        nowhere = c.get(f"{V1}/devices", params={"township": "nowhere"}).json()
        assert nowhere == {"items": [], "next_cursor": None}


@pytest.mark.parametrize("params", [
    {"limit": 501}, {"limit": 0}, {"status": "sleepy"}, {"cursor": "!!!"}, {"cursor": "MTIz"},
    {"q": ""}, {"kind": "x" * 201},
])
def test_device_list_422(api: Api, params: dict[str, object]) -> None:
    with api.client() as c:
        r = c.get(f"{V1}/devices", params=params)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["msg"]


def test_device_detail_latest_health_alerts(api: Api) -> None:
    with api.client() as c:
        d = c.get(f"{V1}/devices/brg-01").json()
        assert d["device"]["status"] == "online" and d["device"]["site_id"] == "site-brg-01"
        assert {v["metric"] for v in d["latest"]} == {"crack_width_mm", "deflection_mm", "strain_ue"}
        assert {a["grade_name"] for a in d["open_alerts"]} == {"red", "orange"}
        air = c.get(f"{V1}/devices/air-0000").json()
        assert air["health"]["battery_v"] == pytest.approx(3.55) and air["health"]["rsrp_dbm"] == -95
        never = c.get(f"{V1}/devices/{api.county.never_seen}").json()
        assert never["device"]["status"] == "offline" and never["latest"] == [] and never["health"] is None
        one = c.get(f"{V1}/devices/brg-01/latest").json()
        assert one["device_id"] == "brg-01" and len(one["values"]) == 3
        assert c.get(f"{V1}/devices/nope").status_code == 404
        assert c.get(f"{V1}/devices/nope/latest").json() == {"detail": "device 'nope' not found"}


def test_latest_many(api: Api) -> None:
    with api.client() as c:
        page = c.get(f"{V1}/latest", params={"kind": "bridge", "limit": 10}).json()
        assert len(page["items"]) == 10 and page["next_cursor"]
        assert all(len(i["values"]) == 3 for i in page["items"])
        params = {"kind": "bridge", "limit": 10, "cursor": page["next_cursor"]}
        nxt = c.get(f"{V1}/latest", params=params).json()
        assert nxt["items"][0]["device_id"] > page["items"][-1]["device_id"]
        ids = [("device", "brg-02"), ("device", "brg-01"), ("device", "nope")]
        some = c.get(f"{V1}/latest", params=ids).json()
        assert [i["device_id"] for i in some["items"]] == ["brg-01", "brg-02"]
        too_many = [("device", f"d{i}") for i in range(101)]
        assert c.get(f"{V1}/latest", params=too_many).status_code == 422


def test_series_raw_and_rollup(api: Api) -> None:
    now = api.county.now
    with api.client() as c:
        base = {"metric": "crack_width_mm", "to": now.isoformat()}
        raw = c.get(f"{V1}/devices/brg-01/series",
                    params={**base, "from": (now - timedelta(minutes=30)).isoformat(), "bucket": "60"}).json()
        assert raw.get("source") == "raw", raw
        assert len(raw["t"]) == 30 and len(raw["v"]) == 30
        hourly = c.get(f"{V1}/devices/brg-01/series", params={
            **base, "from": (now - timedelta(hours=3)).isoformat(), "bucket": "PT1H", "agg": "count"}).json()
        assert hourly["source"] == "readings_1h" and sum(hourly["v"]) == 180
        total = c.get(f"{V1}/devices/brg-01/series", params={
            **base, "from": (now - timedelta(hours=3)).isoformat(), "bucket": "PT10M", "agg": "sum"}).json()
        assert total["source"] == "raw"  # buckets under an hour read raw rows (migration 9)
        hourly_sum = c.get(f"{V1}/devices/brg-01/series", params={
            **base, "from": (now - timedelta(hours=3)).isoformat(), "bucket": "PT1H", "agg": "sum"}).json()
        assert sum(total["v"]) == pytest.approx(sum(hourly_sum["v"])) and sum(total["v"]) > 0
        half_hour = {**base, "from": (now - timedelta(minutes=30)).isoformat(), "bucket": "PT30M"}
        raw = {agg: c.get(f"{V1}/devices/brg-01/series", params={**half_hour, "agg": agg}).json()["v"]
               for agg in ("sum", "avg", "count")}
        weighted = sum(a * n for a, n in zip(raw["avg"], raw["count"], strict=True))
        assert sum(raw["sum"]) == pytest.approx(weighted)
        for agg in ("avg", "min", "max", "last"):
            r = c.get(f"{V1}/devices/brg-01/series", params={**base, "bucket": "PT5M", "agg": agg})
            assert r.status_code == 200 and r.json()["agg"] == agg
        none = c.get(f"{V1}/devices/brg-01/series", params={"metric": "no_such"}).json()
        assert none["t"] == [] and none["from"]


@pytest.mark.parametrize(("params", "says"), [
    ({"metric": "m", "bucket": "1", "from": "2030-01-01T00:00:00Z", "to": "2030-01-02T00:00:00Z"},
     "at most 10000"),
    ({"metric": "m", "from": "2030-01-02T00:00:00Z", "to": "2030-01-01T00:00:00Z"}, "after from"),
    ({"metric": "m", "from": "2020-01-01T00:00:00Z", "to": "2030-01-01T00:00:00Z", "bucket": "P30D"},
     "at most"),
    ({"metric": "m", "bucket": "0.5"}, "at least 1 second"),
    ({"metric": "m", "from": "2030-01-01T00:00:00"}, "timezone"),
    ({"metric": "m", "agg": "median"}, "avg"),
    ({}, "Field required"),
])
def test_series_422(api: Api, params: dict[str, str], says: str) -> None:
    with api.client() as c:
        r = c.get(f"{V1}/devices/brg-01/series", params=params)
    assert r.status_code == 422, r.text
    assert says in r.text


def test_series_unknown_device(api: Api) -> None:
    with api.client() as c:
        assert c.get(f"{V1}/devices/nope/series", params={"metric": "m"}).status_code == 404


def test_map_is_aggregated(api: Api) -> None:
    with api.client() as c:
        m = c.get(f"{V1}/map", params={"cell_deg": 0.05}).json()
        assert sum(x["online"] + x["late"] + x["offline"] for x in m["cells"]) == 1740
        assert len(m["cells"]) < 200 and len(m["bridges"]) == 22
        assert {b["worst_grade"] for b in m["bridges"]} == {None, 1, 3}
        assert c.get(f"{V1}/map", params={"cell_deg": 0.0001}).status_code == 422
        chargers = c.get(f"{V1}/map", params={"kind": "charger"}).json()
        assert sum(x["online"] for x in chargers["cells"]) == 1200


def test_sites_and_bridges(api: Api) -> None:
    with api.client() as c:
        page = c.get(f"{V1}/sites", params={"kind": "bridge", "limit": 10}).json()
        assert len(page["items"]) == 10 and page["next_cursor"]
        site = c.get(f"{V1}/sites/site-brg-01").json()
        assert site["site"]["worst_grade"] == 1 and site["site"]["open_alerts"] == 2
        assert [ch["device_id"] for ch in site["channels"]] == ["brg-01"]
        assert c.get(f"{V1}/sites/nope").status_code == 404
        assert c.get(f"{V1}/sites", params={"kind": "castle"}).status_code == 422
        bridges = c.get(f"{V1}/bridges").json()
        assert len(bridges) == 22 and all(len(b["channels"]) == 1 for b in bridges)


def test_chargers(api: Api) -> None:
    with api.client() as c:
        stations = c.get(f"{V1}/chargers/stations").json()
        assert len(stations) == api.county.stations
        assert sum(sum(s["counts"].values()) for s in stations) == 1200
        first = c.get(f"{V1}/devices/chg-00000").json()["device"]
        near = c.get(f"{V1}/chargers/nearest", params={"lat": first["lat"], "lon": first["lon"],
                                                       "radius_m": 2000, "limit": 5}).json()
        assert near and all(n["state"] == "Available" for n in near)
        dists = [n["distance_m"] for n in near]
        assert dists == sorted(dists) and dists[-1] <= 2000
        assert c.get(f"{V1}/chargers/nearest", params={"lat": 0, "lon": 0, "radius_m": 1000}).json() == []
        for bad in ({"lat": 91, "lon": 0}, {"lat": 30, "lon": 106, "radius_m": 60_000}, {"lat": 30},
                    {"lat": 30, "lon": 106, "limit": 51}):
            assert c.get(f"{V1}/chargers/nearest", params=bad).status_code == 422


def test_alert_lists_and_detail(api: Api) -> None:
    ids = api.county.alert_ids
    with api.client() as c:
        everything = c.get(f"{V1}/alerts").json()["items"]
        assert [a["alert_id"] for a in everything] == sorted(ids, reverse=True)
        assert len(c.get(f"{V1}/alerts", params={"state": "open"}).json()["items"]) == 4
        red_orange = c.get(f"{V1}/alerts", params={"grade": "orange", "state": "open"}).json()["items"]
        assert {a["grade"] for a in red_orange} == {1, 2}
        assert len(c.get(f"{V1}/alerts", params={"site": "site-brg-01"}).json()["items"]) == 2
        district = c.get(f"{V1}/devices/brg-01").json()["device"]["district"]
        in_district = c.get(f"{V1}/alerts", params={"district": district}).json()["items"]
        assert in_district and all(c.get(f"{V1}/devices/{a['device_id']}").json()["device"]["district"]
                                   == district for a in in_district)
        page = c.get(f"{V1}/alerts", params={"limit": 2}).json()
        rest = c.get(f"{V1}/alerts", params={"limit": 10, "cursor": page["next_cursor"]}).json()
        assert len(page["items"]) + len(rest["items"]) == 5
        assert c.get(f"{V1}/alerts", params={"since": "2000-01-01T00:00:00Z",
                                             "until": "2001-01-01T00:00:00Z"}).json()["items"] == []
        detail = c.get(f"{V1}/alerts/{ids[0]}").json()
        assert detail["alert"]["alert_id"] == ids[0] and detail["transitions"][0]["actor"] == "engine"
        assert c.get(f"{V1}/alerts/999999").status_code == 404
        for bad in ({"grade": "purple"}, {"state": "sleeping"}, {"limit": 9999},
                    {"since": "2030-01-02T00:00:00Z", "until": "2030-01-01T00:00:00Z"}):
            assert c.get(f"{V1}/alerts", params=bad).status_code == 422
        assert c.get(f"{V1}/alerts/0").status_code == 422
        inc = c.get(f"{V1}/incidents").json()["items"]
        assert [i["incident_id"] for i in inc] == [api.county.incident_id]
        members = c.get(f"{V1}/incidents/{api.county.incident_id}").json()["alerts"]
        assert len(members) == 2
        assert c.get(f"{V1}/incidents/424242").status_code == 404


def test_dashboard_is_served(api: Api) -> None:
    with api.client(None) as c:
        page = c.get("/")
        assert page.status_code == 200 and "citysense" in page.text
