"""Roles on every mutating route, 401/403/429 bodies, registry writes, alert actions, keys."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import psycopg
import pytest

from api.app import create_app
from storage import apikeys
from tests.api.conftest import Api, ServerThread, _free_port
from tests.storage.registry_sample import sample_registry

pytestmark = pytest.mark.services
V1 = "/api/v1"


def test_401_without_or_with_a_bad_key(api: Api) -> None:
    with api.client(None) as c:
        r = c.get(f"{V1}/devices")
        assert r.status_code == 401 and "API key is required" in r.json()["detail"]
        assert r.headers["www-authenticate"] == "Bearer"
    for token in ("garbage", "csk_nope_nope", api.county.tokens["viewer"] + "x"):
        with api.client(token=token) as c:
            r = c.get(f"{V1}/devices")
            assert r.status_code == 401 and r.json() == {"detail": "unknown or revoked API key"}
    with api.client(None) as c:
        bearer = c.get(f"{V1}/overview", headers={"Authorization": f"Bearer {api.county.tokens['viewer']}"})
        assert bearer.status_code == 200


MUTATIONS = [
    ("post", "/alerts/{a}/acknowledge", "operator"), ("post", "/alerts/{a}/resolve", "operator"),
    ("post", "/incidents/{i}/acknowledge", "operator"), ("post", "/silences", "operator"),
    ("delete", "/silences/1", "operator"), ("post", "/devices", "admin"),
    ("patch", "/devices/brg-01", "admin"),
    ("delete", "/devices/brg-01", "admin"), ("post", "/devices/import", "admin"),
]


@pytest.mark.parametrize(("method", "path", "needs"), MUTATIONS)
def test_403_below_the_role(api: Api, method: str, path: str, needs: str) -> None:
    url = V1 + path.format(a=api.county.alert_ids[0], i=api.county.incident_id)
    below = ["viewer"] if needs == "operator" else ["viewer", "operator"]
    for role in below:
        with api.client(role) as c:
            r = c.request(method.upper(), url, json={})
            assert r.status_code == 403, (role, r.text)
            assert f"needs the {needs} role" in r.json()["detail"] and role in r.json()["detail"]


def test_operator_acknowledges_resolves_and_silences(api: Api) -> None:
    a = api.county.alert_ids[2]  # yellow, firing, brg-02
    with api.client("operator") as c:
        acked = c.post(f"{V1}/alerts/{a}/acknowledge", json={"reason": "crew sent"}).json()
        assert acked["acknowledged"] and acked["acknowledged_by"] == "key:test-operator"
        again = c.post(f"{V1}/alerts/{a}/acknowledge")
        assert again.status_code == 200 and again.json()["acknowledged_at"] == acked["acknowledged_at"]
        resolved = c.post(f"{V1}/alerts/{a}/resolve", json={"reason": "fixed"}).json()
        assert resolved["state"] == "resolved" and resolved["resolved_by"] == "key:test-operator"
        assert c.post(f"{V1}/alerts/{a}/resolve").status_code == 404  # no longer open
        assert c.post(f"{V1}/alerts/999999/acknowledge").status_code == 404
        assert c.post(f"{V1}/alerts/{a}/acknowledge", json={"reason": "x" * 501}).status_code == 422
        actions = [t["action"] for t in c.get(f"{V1}/alerts/{a}").json()["transitions"]]
        assert actions == ["fired", "acknowledged", "resolved_by_hand"]
        inc = c.post(f"{V1}/incidents/{api.county.incident_id}/acknowledge").json()
        assert inc["acknowledged"]
        members = c.get(f"{V1}/incidents/{api.county.incident_id}").json()["alerts"]
        assert all(m["acknowledged"] for m in members)
        assert c.post(f"{V1}/incidents/424242/acknowledge").status_code == 404
        s = c.post(f"{V1}/silences", json={"selector": {"site": ["site-brg-05"]}, "reason": "maintenance",
                                           "ends_at": "2099-01-01T00:00:00Z"})
        assert s.status_code == 201 and s.json()["created_by"] == "key:test-operator"
        sid = s.json()["silence_id"]
        assert sid in [x["silence_id"] for x in c.get(f"{V1}/silences").json()]
        assert c.delete(f"{V1}/silences/{sid}").status_code == 204
        assert c.delete(f"{V1}/silences/{sid}").status_code == 404
        for bad in ({"selector": {}, "reason": "r", "ends_at": "2099-01-01T00:00:00Z"},
                    {"selector": {"planet": ["x"]}, "reason": "r", "ends_at": "2099-01-01T00:00:00Z"},
                    {"selector": {"site": ["a"]}, "reason": "r", "ends_at": "2000-01-01T00:00:00Z"},
                    {"selector": {"site": ["a"]}, "reason": "", "ends_at": "2099-01-01T00:00:00Z"}):
            assert c.post(f"{V1}/silences", json=bad).status_code == 422, bad


def test_admin_registers_updates_deactivates_imports(api: Api) -> None:
    body = {"device_id": "air-new-1", "kind": "air", "profile": "air", "network": "lte-cat1",
            "township": "渠江街道", "district": "渠江片区", "lat": 30.83, "lon": 106.97,
            "report_interval_s": 60}
    with api.client("admin") as c:
        created = c.post(f"{V1}/devices", json=body)
        assert created.status_code == 201 and created.json()["status"] == "offline"
        assert c.post(f"{V1}/devices", json=body).status_code == 409
        assert c.post(f"{V1}/devices", json={**body, "device_id": "x2", "site_id": "nope"}).status_code == 422
        assert c.post(f"{V1}/devices", json={**body, "device_id": "x3", "lat": 99}).status_code == 422
        assert c.post(f"{V1}/devices", json={**body, "device_id": "x4", "hacker": 1}).status_code == 422
        moved = c.patch(f"{V1}/devices/air-new-1", json={"site_id": "site-brg-01", "report_interval_s": 30})
        assert moved.json()["site_id"] == "site-brg-01" and moved.json()["report_interval_s"] == 30
        assert c.patch(f"{V1}/devices/air-new-1", json={"kind": None}).status_code == 422
        assert c.patch(f"{V1}/devices/nope", json={"kind": "air"}).status_code == 404
        gone = c.delete(f"{V1}/devices/air-new-1").json()
        assert gone["active"] is False
        ids = [d["device_id"] for d in c.get(f"{V1}/devices", params={"q": "air-new"}).json()["items"]]
        assert ids == []
        assert c.delete(f"{V1}/devices/nope").status_code == 404
        imported = c.post(f"{V1}/devices/import", json=sample_registry())
        assert imported.json() == {"sites": 2, "devices": 4}
        assert c.get(f"{V1}/devices/strain-1").json()["device"]["site_id"] == "bridge-01"
        bad = sample_registry()
        bad["devices"][0]["site_id"] = "missing-site"
        assert c.post(f"{V1}/devices/import", json=bad).status_code == 422


def test_rate_limit_per_key(api: Api) -> None:
    settings = api.settings.model_copy(update={"api_rate_per_s": 1.0, "api_rate_burst": 3, "api_live": False})
    port = _free_port()
    with ServerThread(create_app(settings), port):
        api2 = Api(f"http://127.0.0.1:{port}", api.db_url, api.county, settings, None)
        with api2.client("viewer") as c:
            codes = [c.get(f"{V1}/sites", params={"limit": 1}).status_code for _ in range(5)]
            assert codes[:3] == [200, 200, 200] and codes[-1] == 429
            r = c.get(f"{V1}/sites")
            assert "rate limit" in r.json()["detail"] and int(r.headers["retry-after"]) >= 1
        with api2.client("operator") as c:  # another key has its own bucket
            assert c.get(f"{V1}/sites", params={"limit": 1}).status_code == 200
        with api2.client(None) as c:
            assert c.get("/readyz").json()["kafka"] == "disabled"
            assert c.get(f"{V1}/stream/alerts",
                         headers={"X-API-Key": api.county.tokens["admin"]}).status_code == 503


def test_apikey_cli_create_list_revoke(api: Api) -> None:
    env = {"CITYSENSE_DATABASE_URL": api.db_url, "PATH": "/usr/bin:/bin"}
    cli = [sys.executable, "-m", "citysense"]
    created = subprocess.run([*cli, "apikey", "create", "--role", "operator", "--name", "cli-op"],
                             capture_output=True, text=True, env=env, check=False, timeout=60)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("csk_")
    listed = subprocess.run([*cli, "apikey", "list"], capture_output=True, text=True, env=env, check=True,
                            timeout=60).stdout
    assert "cli-op\toperator" in listed and token not in listed
    with api.client(token=token) as c:
        assert c.get(f"{V1}/sites", params={"limit": 1}).status_code == 200
    bad = subprocess.run([*cli, "apikey", "create", "--role", "god", "--name", "x"], capture_output=True,
                         text=True, env=env, check=False, timeout=60)
    assert bad.returncode == 2 and "--role must be one of" in bad.stderr
    revoked = subprocess.run([*cli, "apikey", "revoke", "cli-op"], capture_output=True, text=True, env=env,
                             check=False, timeout=60)
    assert revoked.returncode == 0 and "revoked 1" in revoked.stdout
    with api.client(token=token) as c:  # the test server caches keys for 0 s
        assert c.get(f"{V1}/sites").status_code == 401


def test_keys_are_stored_hashed(api: Api) -> None:
    async def rows() -> list[tuple[object, ...]]:
        async with await psycopg.AsyncConnection.connect(api.db_url) as conn:
            cur = await conn.execute("SELECT prefix, key_hash FROM api_keys")
            return list(await cur.fetchall())

    token = api.county.tokens["admin"]
    stored = asyncio.run(rows())
    assert all(token.split("_")[2] not in str(r) for r in stored)
    assert any(r[1] == apikeys.hash_secret(token.split("_")[2]) for r in stored)


def test_overview_is_shared_and_refreshed_in_the_background(api: Api) -> None:
    import time

    settings = api.settings.model_copy(update={"api_overview_cache_s": 0.5, "api_live": False})
    port = _free_port()
    with ServerThread(create_app(settings), port):
        other = Api(f"http://127.0.0.1:{port}", api.db_url, api.county, settings, None)
        with other.client("viewer") as c, other.client("admin") as admin:
            first = c.get(f"{V1}/overview").json()
            assert admin.post(f"{V1}/devices", json={
                "device_id": "ov-new-1", "kind": "air", "profile": "air", "network": "lte-cat1",
                "township": "t", "district": "d", "report_interval_s": 60}).status_code == 201
            assert c.get(f"{V1}/overview").json()["generated_at"] == first["generated_at"]  # shared
            deadline = time.monotonic() + 10
            while True:
                now = c.get(f"{V1}/overview").json()  # after 0.5 s: stale once, then refreshed
                if now["totals"]["total"] == first["totals"]["total"] + 1:
                    break
                assert time.monotonic() < deadline, "the overview was never refreshed"
                time.sleep(0.2)
            admin.delete(f"{V1}/devices/ov-new-1")


def test_citysense_api_command_serves_and_stops_on_sigterm(api: Api) -> None:
    import signal
    import time

    import httpx

    port = _free_port()
    env = {"CITYSENSE_DATABASE_URL": api.db_url, "CITYSENSE_API_PORT": str(port),
           "CITYSENSE_API_LIVE": "false", "PATH": "/usr/bin:/bin", "CITYSENSE_STATE_DIR": "/nonexistent"}
    proc = subprocess.Popen([sys.executable, "-m", "citysense", "api"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
                break
            except httpx.HTTPError:
                assert proc.poll() is None and time.monotonic() < deadline, "citysense api did not start"
                time.sleep(0.2)
        assert ready.json() == {"status": "ok", "database": "ok", "kafka": "disabled"}
        key = api.county.tokens["viewer"]
        me = httpx.get(f"http://127.0.0.1:{port}/api/v1/me", headers={"X-API-Key": key}).json()
        assert me["role"] == "viewer"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    # uvicorn drains, runs the lifespan's shutdown, then re-raises the signal it caught
    assert proc.returncode in (0, -signal.SIGTERM), out
    assert "Application shutdown complete" in out
    assert key not in out and "csk_" not in out  # the key is never logged
    assert api.db_url not in out  # nor the database URL
