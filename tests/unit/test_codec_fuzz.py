"""Issue 12: hypothesis fuzzes every decoder. Whatever the bytes, a codec returns records or its own
refusal (``DecodeError`` with a known reason code), never raises; what it accepts it can encode
again to the same records (round trip) where the wire format allows it."""

from __future__ import annotations

import json
import struct
import time
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brokers.base import Message
from citysense.records import Envelope, RecordBatch, encode
from ingest.codecs import CODECS, codec_named
from ingest.codecs import base as reasons
from ingest.codecs.nbiot_frame import crc16
from ingest.codecs.ocpp16 import REQUESTS
from ingest.dedupe import Deduper
from ingest.normaliser import Normalise
from ingest.profiles import PROFILES
from tests.unit.test_codecs_roundtrip import nbiot_batch

REASONS = {v for k, v in vars(reasons).items() if k.isupper() and isinstance(v, str)}
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SHAPED = settings(FUZZ, max_examples=120)  # generating nested JSON costs more than decoding it

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=5)
                    | st.dictionaries(st.text(max_size=12), inner, max_size=5), max_leaves=12)
OCPP_FIELDS = sorted({f for cls in REQUESTS.values() for f in cls.__struct_fields__} | {
    "value", "unit", "phase", "measurand", "context", "format", "location", "sampledValue", "timestamp"})
OCPP_ACTIONS = [*REQUESTS, "Authorize", "DataTransfer", ""]


def _check(codec_name: str, payload: bytes) -> RecordBatch | reasons.DecodeError:
    codec = codec_named(codec_name)
    out = codec.decode("dev-1", payload, 1_700_000_000 * 10**9)
    assert isinstance(out, RecordBatch | reasons.DecodeError), out
    if isinstance(out, reasons.DecodeError):
        assert out.reason_code in REASONS, out
    else:
        for r in out.readings:
            assert isinstance(r.value, float) and isinstance(r.time_ns, int) and r.device_id == "dev-1"
        for s in out.statuses:
            assert type(s.connector) is int
    return out


@FUZZ
@given(st.sampled_from(sorted(CODECS)), st.binary(max_size=600))
def test_any_bytes_are_records_or_a_refusal(codec_name: str, payload: bytes) -> None:
    _check(codec_name, payload)


@st.composite
def cat1_like(draw: st.DrawFn) -> bytes:
    metric = st.sampled_from([m.name for m in PROFILES["air"].metrics]) | st.text(max_size=10)
    body: dict[str, Any] = {
        "ts": draw(st.integers(-(2**64), 2**64) | JSON),
        "m": draw(st.dictionaries(metric, st.floats() | SCALARS, max_size=8) | JSON),
    }
    if draw(st.booleans()):
        body["seq"] = draw(st.integers(-(2**40), 2**40) | SCALARS)
    if draw(st.booleans()):
        body[draw(st.text(max_size=8))] = draw(JSON)
    return json.dumps(body, allow_nan=True).encode()


@SHAPED
@given(cat1_like())
def test_cat1_json_shaped_input(payload: bytes) -> None:
    out = _check("cat1-json", payload)
    if isinstance(out, RecordBatch):  # what it accepts survives its own encoding
        codec = codec_named("cat1-json")
        again = codec.decode("dev-1", codec.encode(out), out.received_ns)
        assert isinstance(again, RecordBatch)
        assert [(r.metric, r.time_ns, r.value, r.seq) for r in again.readings] == [
            (r.metric, r.time_ns, r.value, r.seq) for r in out.readings] or any(
            r.value != r.value for r in out.readings)  # NaN is never equal to itself


@st.composite
def ocpp_like(draw: st.DrawFn) -> bytes:
    field = st.sampled_from(OCPP_FIELDS) | st.text(max_size=8)
    value = st.recursive(
        SCALARS | st.sampled_from(["2025-01-01T00:00:00Z", "Wh", "L1-N", "Voltage", "Charging", "NoError"]),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(field, inner, max_size=6), max_leaves=15)
    body = draw(st.dictionaries(field, value, max_size=8))
    frame = [draw(st.sampled_from([2, 2, 2, 3, 4]) | st.integers()), draw(st.text(max_size=40)),
             draw(st.sampled_from(OCPP_ACTIONS)), body]
    return json.dumps(frame).encode()


@SHAPED
@given(ocpp_like())
def test_ocpp_shaped_input(payload: bytes) -> None:
    _check("charger-ocpp", payload)


@SHAPED
@given(st.sampled_from(["StatusNotification", "MeterValues", "StartTransaction"]), SCALARS, SCALARS)
def test_ocpp_messages_valid_but_for_one_field(action: str, connector: object, meter: object) -> None:
    """Near-valid messages reach the checks behind the schema: a connectorId or meter reading of any
    JSON type (``true`` once passed as connector 1, since bool is an int in Python)."""
    t = "2025-01-01T00:00:00.000Z"
    body: dict[str, Any] = {
        "StatusNotification": {"connectorId": connector, "status": "Charging", "errorCode": "NoError",
                               "timestamp": t},
        "MeterValues": {"connectorId": connector, "meterValue": [
            {"timestamp": t, "sampledValue": [{"value": meter if isinstance(meter, str) else "1"}]}]},
        "StartTransaction": {"connectorId": connector, "idTag": "A", "meterStart": meter, "timestamp": t},
    }[action]
    out = _check("charger-ocpp", json.dumps([2, "1", action, body]).encode())
    if isinstance(out, RecordBatch) and action != "MeterValues":
        assert type(connector) is int and (action != "StartTransaction" or type(meter) is int)


@SHAPED
@given(nbiot_batch(PROFILES["env"]), st.data())
def test_nbiot_frames_mutated_with_a_valid_crc(batch: RecordBatch, data: st.DataObject) -> None:
    """Mutations behind a recomputed CRC reach the structural and meaning checks."""
    frame = bytearray(codec_named("nbiot-frame").encode(batch)[:-2])
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["set", "insert", "delete"]))
        i = data.draw(st.integers(0, max(0, len(frame) - 1)))
        if op == "set" and frame:
            frame[i] = data.draw(st.integers(0, 255))
        elif op == "insert":
            frame[i:i] = data.draw(st.binary(min_size=1, max_size=4))
        elif frame:
            del frame[i]
    payload = bytes(frame) + struct.pack(">H", crc16(bytes(frame)))
    for name in ("nbiot-frame", "nbiot-frame-hex"):
        out = _check(name, payload if name == "nbiot-frame" else payload.hex().encode())
        if isinstance(out, RecordBatch):
            assert out.readings or out.health


@FUZZ
@given(st.sampled_from([*sorted(PROFILES), "volcano"]), st.text(max_size=70), st.binary(max_size=300))
def test_the_normaliser_never_raises_on_any_topic_or_payload(kind: str, device: str, payload: bytes) -> None:
    env = Envelope(f"devices/{kind}/{device}/up", device, time.time_ns(), payload)
    out = Normalise()(Message("raw", 0, 1, None, encode(env), 0), Deduper(10))
    assert out.batch is not None or out.dead is not None or out.duplicate  # never nothing at all
    if out.dead is not None:
        assert out.dead.reason_code != "internal_error"
