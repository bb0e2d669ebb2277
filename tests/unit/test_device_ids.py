"""Issue 12, finding 1: one device-id rule at the normaliser, registration and the password tool,
and a database error classification where an error PostgreSQL will never accept is not retried."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import psycopg
import pytest
from pydantic import ValidationError

from brokers.base import Message
from citysense import device_ids
from citysense.records import Envelope, encode
from ingest.codecs import codec_named
from ingest.dedupe import Deduper
from ingest.normaliser import Normalise
from ingest.topics import uplink_topic
from storage import registry
from storage.db import is_refused, is_transient
from tests.integration.test_normaliser_faults import air_batch
from tests.storage.registry_sample import sample_registry

ROOT = Path(__file__).resolve().parents[2]
LONG_ID = "air-" + "x" * 3000
BAD_IDS = [LONG_ID, "a" * 65, "air 1", "air:1", "-air", ".air", "air\x00", "傳感器-1", "air-1\n",
           "air'; DROP TABLE readings;--", "ａｉｒ-1", "air-1\u200b", ""]
GOOD_IDS = ["air-0001", "brg-01", "a", "A" * 64, "chg_7.3-x", "1abc"]


def _mqtt_passwd():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("mqtt_passwd", ROOT / "deploy/local/mqtt_passwd.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("device_id", GOOD_IDS)
def test_ordinary_ids_pass_everywhere(device_id: str) -> None:
    assert device_ids.device_id_problem(device_id) is None
    assert _mqtt_passwd().valid_device_id(device_id)
    registry.DeviceIn.model_validate(sample_registry()["devices"][0] | {"device_id": device_id})


@pytest.mark.parametrize("device_id", BAD_IDS)
def test_overlong_and_odd_ids_are_refused_everywhere(device_id: str) -> None:
    assert device_ids.device_id_problem(device_id) is not None
    assert not device_ids.is_valid_device_id(device_id)
    assert not _mqtt_passwd().valid_device_id(device_id)
    if device_id.strip() != device_id:
        return  # the registry strips surrounding whitespace before it checks (a file's line end)
    with pytest.raises(ValidationError):
        registry.DeviceIn.model_validate(sample_registry()["devices"][0] | {"device_id": device_id})


def test_the_password_tool_keeps_the_same_rule() -> None:
    tool = _mqtt_passwd()
    for device_id in [*GOOD_IDS, *BAD_IDS, "a" * 64, "a" * 65, "_x", "x_", "x.y-z_1"]:
        assert tool.valid_device_id(device_id) == device_ids.is_valid_device_id(device_id), device_id


def test_the_password_tool_refuses_a_long_id_in_a_devices_file(tmp_path: Path) -> None:
    devices = tmp_path / "devices.txt"
    devices.write_text(f"air-0001\n{LONG_ID}\n")
    with pytest.raises(SystemExit, match="invalid device id"):
        _mqtt_passwd().read_devices(str(devices))


def test_the_registry_import_refuses_a_long_id() -> None:
    doc = sample_registry()
    doc["devices"][0]["device_id"] = LONG_ID
    with pytest.raises(ValidationError, match="device_id"):
        registry.Registry.model_validate(doc)


def test_the_normaliser_dead_letters_a_long_id_as_bad_device_id() -> None:
    now = time.time_ns()
    payload = codec_named("cat1-json").encode(air_batch(LONG_ID, 1, now))
    env = Envelope(uplink_topic("air", LONG_ID), LONG_ID, now, payload)
    msg = Message("raw", 0, 7, LONG_ID.encode(), encode(env), 0)
    out = Normalise()(msg, Deduper(100))
    assert out.batch is None and out.dead is not None
    assert out.dead.reason_code == "bad_device_id"
    assert len(out.dead.device_id) <= device_ids.MAX_DEVICE_ID_LEN
    assert out.dead.original == msg.value  # the whole envelope is kept for an operator


def _error(sqlstate: str) -> psycopg.Error:
    cls = psycopg.errors.lookup(sqlstate)
    return cls(f"simulated {sqlstate}")


@pytest.mark.parametrize("sqlstate", ["54000", "22P05", "22003", "23502", "23514", "22021"])
def test_errors_the_database_will_never_accept_are_not_transient(sqlstate: str) -> None:
    exc = _error(sqlstate)
    assert not is_transient(exc)
    assert is_refused(exc)


@pytest.mark.parametrize("sqlstate", ["08006", "40001", "40P01", "53100", "53300", "57P01", "55P03"])
def test_the_servers_own_trouble_is_transient(sqlstate: str) -> None:
    exc = _error(sqlstate)
    assert is_transient(exc)
    assert not is_refused(exc)


def test_a_broken_connection_without_sqlstate_is_transient() -> None:
    assert is_transient(psycopg.OperationalError("server closed the connection unexpectedly"))
    assert not is_transient(ValueError("not a database error"))


def test_overlong_topics_stay_out_of_the_route_cache() -> None:
    normalise = Normalise()
    for i in range(50):
        assert normalise.route(uplink_topic("air", f"{i}-" + "x" * 60_000))[0] == "bad_device_id"
    assert normalise.route(uplink_topic("air", "air-1")) is normalise.route(uplink_topic("air", "air-1"))
    assert len(normalise._routes) == 1
