"""Locust users for citysense: MQTT devices (publish -> stored), and HTTP operators (the API).

    CITYSENSE_STATE_DIR=/path/to/.state .venv/bin/locust -f loadtests/locustfile.py --headless \\
        -u 200 -r 50 -t 60s --csv loadtests/results/locust

A running pipeline is needed (``make demo``, or ``citysense bridge|normalise|write``).
Each ``Device`` is one LTE-Cat1 air-quality station (``locust-<n>``) sending a
JSON uplink (six readings, device time = now, sequence numbers from 0) every
``CITYSENSE_LOCUST_INTERVAL_S`` seconds (default 5) over its own MQTT connection
at QoS 1, logged in as the load generator's account (``citysense-loadgen``, which
the broker ACL lets write ``devices/#``: the simulators' load mode does the same).
It reports two timings to locust:

- ``mqtt publish->puback``: until the broker's PUBACK;
- ``mqtt publish->stored``: until the uplink's row is in ``readings`` (polled by
  primary key every ``CITYSENSE_LOCUST_POLL_S``, default 0.05 s, so the figure is
  exact to within one poll; a failure after ``CITYSENSE_LOCUST_TIMEOUT_S``, 30 s).

Settings come from the environment or ``$CITYSENSE_STATE_DIR/env`` (the CLI's
fallback): ``CITYSENSE_MQTT_URL``, ``CITYSENSE_MQTT_LOADGEN_PASSWORD`` (locally the
bridge's), ``CITYSENSE_DATABASE_URL``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from urllib.parse import urlsplit

import paho.mqtt.client as paho
import psycopg
from locust import User, constant_pacing, events, task

from citysense.records import Reading, RecordBatch
from citysense.settings import load_settings
from ingest.codecs import codec_named
from ingest.profiles import AIR_CAT1
from ingest.topics import uplink_topic
from simulators.settings import SimulatorSettings

_numbers = itertools.count()
_CODEC = codec_named(AIR_CAT1.codec)
_VALUES = {"pm25": 35.0, "pm10": 60.0, "no2": 40.0, "o3": 80.0, "temperature": 21.5, "humidity": 55.0}


def _settings() -> tuple[str, int, str, str]:
    s = load_settings(SimulatorSettings)
    if not s.mqtt_url or s.mqtt_loadgen_password is None or s.database_url is None:
        raise RuntimeError("CITYSENSE_MQTT_URL, the loadgen password and CITYSENSE_DATABASE_URL must be set")
    parts = urlsplit(s.mqtt_url)
    return (parts.hostname or "127.0.0.1", parts.port or 1883, s.mqtt_loadgen_password.get_secret_value(),
            s.database_url.get_secret_value())


class Device(User):
    """One Cat1 air station: an uplink every interval, timed until it is stored."""

    wait_time = constant_pacing(float(os.environ.get("CITYSENSE_LOCUST_INTERVAL_S", "5")))

    def on_start(self) -> None:
        host, port, password, self.database_url = _settings()
        self.device_id = f"locust-{os.getpid()}-{next(_numbers):05d}"
        self.topic = uplink_topic(AIR_CAT1.kind, self.device_id)
        self.seq = 0
        self.poll_s = float(os.environ.get("CITYSENSE_LOCUST_POLL_S", "0.05"))
        self.timeout_s = float(os.environ.get("CITYSENSE_LOCUST_TIMEOUT_S", "30"))
        self.mqtt = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=self.device_id,
                                protocol=paho.MQTTv311)
        self.mqtt.username_pw_set("citysense-loadgen", password)
        self.mqtt.connect(host, port, keepalive=60)
        self.mqtt.loop_start()
        self.db = psycopg.connect(self.database_url, autocommit=True)

    def on_stop(self) -> None:
        self.mqtt.disconnect()
        self.mqtt.loop_stop()
        self.db.close()

    def _fire(self, name: str, started: float, length: int, exc: BaseException | None = None) -> None:
        elapsed_ms = (time.perf_counter() - started) * 1000
        events.request.fire(request_type="MQTT", name=name, response_time=elapsed_ms,
                            response_length=length, exception=exc, context={})

    @task
    def uplink(self) -> None:
        now = time.time_ns() // 1_000_000 * 1_000_000  # the JSON carries milliseconds
        readings = tuple(Reading(self.device_id, m, now, v, now, self.seq) for m, v in _VALUES.items())
        payload = _CODEC.encode(RecordBatch(self.device_id, now, readings))
        self.seq += 1
        started = time.perf_counter()
        info = self.mqtt.publish(self.topic, payload, qos=1)
        try:
            info.wait_for_publish(timeout=self.timeout_s)
        except (RuntimeError, ValueError) as exc:
            self._fire("mqtt publish->puback", started, len(payload), exc)
            return
        if not info.is_published():
            self._fire("mqtt publish->puback", started, len(payload), TimeoutError("no PUBACK"))
            return
        self._fire("mqtt publish->puback", started, len(payload))
        self._wait_stored(started, now, len(payload))

    def _wait_stored(self, started: float, time_ns: int, length: int) -> None:
        query = ("SELECT 1 FROM readings WHERE device_id = %s AND metric = 'pm25' "
                 "AND time = timestamptz 'epoch' + %s * interval '1 microsecond'")
        deadline = started + self.timeout_s
        while time.perf_counter() < deadline:
            if self.db.execute(query, (self.device_id, time_ns // 1000)).fetchone():
                self._fire("mqtt publish->stored", started, length)
                return
            time.sleep(self.poll_s)  # gevent-patched: other users run meanwhile
        self._fire("mqtt publish->stored", started, length, TimeoutError(f"not stored in {self.timeout_s}s"))


# ---------------------------------------------------------------------------------------------
# HTTP operator users (the query API). The API and its locust operators come from branch h5
# (``loadtests/api_locust.py``: overview, devices page, latest, 24 h series, open alerts).
# Once merged, set CITYSENSE_BENCH_KEY (an API key with the operator role) and
# CITYSENSE_BENCH_DEVICES, and pass --host http://127.0.0.1:<api port>; they then run beside
# the devices. Until then this module runs devices only.
# ---------------------------------------------------------------------------------------------
if os.environ.get("CITYSENSE_BENCH_KEY"):
    with contextlib.suppress(ImportError):
        from loadtests.api_locust import Operator  # noqa: F401  (locust collects User classes)
