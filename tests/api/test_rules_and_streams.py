"""Rules by role, and the live streams (alerts topic, readings topic) over real Kafka."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest

from api.app import create_app
from api.live import LiveHub
from brokers.kafka import KafkaBus, KafkaConfig
from citysense.records import encode
from tests.api.conftest import Api, ServerThread, _free_port
from tests.storage.factories import real_now, uplink

pytestmark = pytest.mark.services
V1 = "/api/v1"
RULE = {"id": "api-crack", "name": "Crack (API)", "selector": {"kind": ["bridge"]},
        "condition": {"type": "threshold", "metric": "crack_width_mm", "direction": "above"},
        "grades": {"yellow": 0.3, "red": 1.0}, "clear": 0.2, "for": "2m", "receivers": ["hook"]}
HOOK = {"name": "hook", "url_env": "NO_SUCH_ENV"}


def test_rules_by_role(api: Api) -> None:
    body = {"rule": RULE, "receivers": [HOOK]}
    with api.client("operator") as op:
        assert op.post(f"{V1}/rules/validate", json=body).status_code == 403
        assert op.post(f"{V1}/rules", json=body).status_code == 403
        assert op.put(f"{V1}/rules/api-crack", json=body).status_code == 403
        assert op.post(f"{V1}/rules/api-crack/disable").status_code == 403
    with api.client("admin") as c:
        ok = c.post(f"{V1}/rules/validate", json=body).json()
        assert ok == {"valid": True, "problems": []}
        bad = {"rule": {**RULE, "grades": {"yellow": 1.0, "red": 0.3}}, "receivers": []}
        checked = c.post(f"{V1}/rules/validate", json=bad).json()
        assert not checked["valid"] and any("increasing" in p["msg"] for p in checked["problems"])
        unknown = c.post(f"{V1}/rules/validate", json={"rule": RULE, "receivers": []}).json()
        assert any("unknown receivers" in p["msg"] for p in unknown["problems"])
        assert c.post(f"{V1}/rules", json=bad).status_code == 422
        created = c.post(f"{V1}/rules", json=body)
        assert created.status_code == 201 and created.json()["updated_by"] == "key:test-admin"
        assert c.post(f"{V1}/rules", json=body).status_code == 409
        changed = c.put(f"{V1}/rules/api-crack", json={**body, "rule": {**RULE, "name": "Renamed"}}).json()
        assert changed["name"] == "Renamed" and changed["definition"]["receiver_specs"][0]["name"] == "hook"
        assert c.put(f"{V1}/rules/other", json=body).status_code == 422
        assert c.put(f"{V1}/rules/nope", json={**body, "rule": {**RULE, "id": "nope"}}).status_code == 404
        assert c.post(f"{V1}/rules/api-crack/disable").json()["enabled"] is False
        assert c.post(f"{V1}/rules/api-crack/enable").json()["enabled"] is True
        assert c.post(f"{V1}/rules/nope/disable").status_code == 404
    with api.client("viewer") as v:
        assert [r["rule_id"] for r in v.get(f"{V1}/rules").json()] == ["api-crack"]
        assert v.get(f"{V1}/rules/api-crack").json()["enabled"] is True
        assert v.get(f"{V1}/rules/nope").status_code == 404


class SseReader:
    """Reads one SSE response in a thread, collecting (event, data) pairs."""

    def __init__(self, api: Api, path: str, params: dict[str, str] | None = None) -> None:
        self.events: list[tuple[str, str]] = []
        self.status = 0
        self._client = api.client("viewer")
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(path, params or {}), daemon=True)

    def _run(self, path: str, params: dict[str, str]) -> None:
        try:
            with self._client.stream("GET", path, params=params) as r:
                self.status = r.status_code
                event = "message"
                for line in r.iter_lines():
                    if line.startswith("event:"):
                        event = line.split(":", 1)[1].strip()
                    elif line.startswith("data:"):
                        self.events.append((event, line.split(":", 1)[1].strip()))
                        self._ready.set()
                    elif line.startswith(":"):
                        self.events.append(("ping", ""))
        except httpx.HTTPError:
            pass
        finally:
            self._ready.set()

    def __enter__(self) -> SseReader:
        self._thread.start()
        assert self._ready.wait(10), "no hello event"
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.close()
        self._thread.join(timeout=5)

    def wait_for(self, event: str, n: int = 1, timeout: float = 15) -> list[dict[str, Any]]:
        import time
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = [json.loads(d) for e, d in self.events if e == event]
            if len(got) >= n:
                return got
            time.sleep(0.1)
        raise AssertionError(f"only {self.events} after {timeout} s")


def _produce(api: Api, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    async def go() -> None:
        producer = KafkaBus(KafkaConfig(bootstrap=api.settings.kafka_bootstrap or "")).producer()
        await producer.start()
        try:
            await producer.send_batch(topic, records)
        finally:
            await producer.stop()

    asyncio.run(go())


@pytest.fixture
def alert_stream(api: Api) -> Iterator[SseReader]:
    with SseReader(api, f"{V1}/stream/alerts", {"grade": "orange", "district": "渠江片区"}) as reader:
        yield reader


def test_alert_stream_filters_by_grade_and_district(api: Api, alert_stream: SseReader) -> None:
    with api.client() as c:
        here = c.get(f"{V1}/devices/brg-01").json()["device"]["district"]
        bridges = c.get(f"{V1}/devices", params={"kind": "bridge"}).json()["items"]
        elsewhere = next(d["device_id"] for d in bridges if d["district"] != here)
    assert here == "渠江片区"
    transition = {"alert_id": 1, "seq": 2, "to_state": "firing", "action": "fired"}
    _produce(api, api.settings.topic_alerts, [
        (b"brg-01", msgspec.json.encode({**transition, "device_id": "brg-01", "grade": 3})),  # too low
        # red, but in another district
        (elsewhere.encode(), msgspec.json.encode({**transition, "device_id": elsewhere, "grade": 1})),
        (b"x", b"\xff not an alert"),  # ignored
        (b"brg-01", msgspec.json.encode({**transition, "device_id": "brg-01", "grade": 1, "seq": 3})),
    ])
    got = alert_stream.wait_for("alert")
    assert [(a["device_id"], a["grade"], a["seq"]) for a in got] == [("brg-01", 1, 3)]
    assert ("ping", "") in alert_stream.events or alert_stream.wait_for("alert") == got


def test_device_readings_stream_and_its_404(api: Api) -> None:
    with api.client() as c:
        assert c.get(f"{V1}/stream/devices/nope/readings").status_code == 404
        assert c.get(f"{V1}/stream/alerts", params={"grade": "purple"}).status_code == 422
    with SseReader(api, f"{V1}/stream/devices/brg-05/readings") as reader:
        now = real_now()
        _produce(api, api.settings.topic_readings, [
            (b"brg-04", encode(uplink("brg-04", now, {"crack_width_mm": 9.0}))),
            (b"brg-05", encode(uplink("brg-05", now, {"crack_width_mm": 0.25}))),
        ])
        got = reader.wait_for("readings")
        assert got[0]["device_id"] == "brg-05" and got[0]["readings"][0]["value"] == 0.25
    with api.client(None) as c:  # the stream's subscription is gone once the client left
        assert "citysense_api_sse_clients 0.0" in c.get("/metrics").text


async def test_slow_subscriber_is_dropped_not_waited_for() -> None:
    async def district_of(device_id: str) -> str | None:
        return None

    dropped: list[int] = []
    hub = LiveHub("127.0.0.1:1", "a", "r", 4, district_of, lambda: dropped.append(1))
    slow, fast = hub.subscribe_alerts(None, None), hub.subscribe_alerts(None, None)
    for i in range(5):
        await hub._alert(msgspec.json.encode({"i": i, "grade": 2}))
        # fast keeps up; slow reads nothing
        assert json.loads(await fast.next() or "") == {"i": i, "grade": 2}
    assert slow.dropped and slow.closed and dropped == [1]
    assert await slow.next() is None and hub.subscribers == 1
    await hub.stop()
    assert fast.closed and await fast.next() is None and hub.subscribers == 0


def test_stopping_the_api_ends_open_streams(api: Api) -> None:
    import time

    port = _free_port()
    server = ServerThread(create_app(api.settings.model_copy(update={"api_port": port})), port)
    with server:
        other = Api(f"http://127.0.0.1:{port}", api.db_url, api.county, api.settings, None)
        reader = SseReader(other, f"{V1}/stream/alerts").__enter__()
        started = time.monotonic()
    took = time.monotonic() - started
    assert not server.thread.is_alive(), "the server did not stop with a stream open"
    reader.__exit__(None, None, None)
    assert not reader._thread.is_alive()
    assert took < 2.5, f"shutdown took {took:.1f} s with a stream open (grace is 3 s)"
