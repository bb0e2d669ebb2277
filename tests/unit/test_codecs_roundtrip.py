"""Codec round trips for every profile (hypothesis), and the NB-IoT frame's checks."""

from __future__ import annotations

import binascii
import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citysense.records import Health, Reading, RecordBatch, Status
from ingest.codecs import CODECS, codec_named
from ingest.codecs.base import (
    BAD_CRC,
    BAD_TIMESTAMP,
    MALFORMED,
    OVERSIZE,
    TRUNCATED,
    UNKNOWN_METRIC,
    UNSUPPORTED_MESSAGE,
    UNSUPPORTED_VERSION,
    DecodeError,
)
from ingest.codecs.cat1_json import JsonTemplate
from ingest.codecs.charger_ocpp import ERROR_CODES, STATES, iso_ms, parse_iso_ns
from ingest.codecs.nbiot_frame import METRIC_TAGS, FrameLayout, crc16, encode_frame
from ingest.profiles import PROFILES, Profile

BASE_S = 1_700_000_000
SEQ = st.integers(0, 2**32 - 1)


def _value(decimals: int, low: float, high: float) -> st.SearchStrategy[float]:
    scale = 10**decimals
    lo, hi = max(int(low * scale), -(2**31)), min(int(high * scale), 2**31 - 1)
    return st.integers(lo, hi).map(lambda raw: raw / scale)


@st.composite
def cat1_batch(draw: st.DrawFn, profile: Profile) -> RecordBatch:
    t = draw(st.integers(1, 2**41)) * 1_000_000
    seq = draw(SEQ)
    metrics = draw(st.lists(st.sampled_from(profile.metrics), min_size=1, unique=True))
    readings = tuple(
        Reading("d1", m.name, t, draw(_value(2, m.low, m.high)), 5, seq) for m in metrics)
    return RecordBatch("d1", 5, readings)


@st.composite
def nbiot_batch(draw: st.DrawFn, profile: Profile) -> RecordBatch:
    base = draw(st.integers(BASE_S, BASE_S + 10**8))
    seq = draw(SEQ)
    offsets = sorted(draw(st.lists(st.integers(0, 65535), min_size=1, max_size=12, unique=True)))
    readings = []
    for dt in offsets:
        for m in draw(st.lists(st.sampled_from(profile.metrics), min_size=1, unique=True)):
            decimals = METRIC_TAGS[m.name][1]
            value = draw(_value(decimals, m.low, min(m.high, (2**31 - 1) / 10**decimals)))
            readings.append(Reading("d1", m.name, (base + dt) * 10**9, value, 5, seq))
    health: tuple[Health, ...] = ()
    if draw(st.booleans()):
        health = (Health(
            "d1", (base + draw(st.integers(offsets[-1], 65535))) * 10**9,
            draw(st.none() | st.integers(-1400, -440).map(lambda v: v / 10)),
            draw(st.none() | st.integers(-100, 300).map(lambda v: v / 10)),
            draw(st.none() | st.integers(0, 2)),
            draw(st.none() | st.integers(2500, 3700).map(lambda v: v / 1000)),
        ),)
    return RecordBatch("d1", 5, tuple(readings), (), health)


@st.composite
def charger_batch(draw: st.DrawFn) -> RecordBatch:
    t = draw(st.integers(1, 2**41)) * 1_000_000
    which = draw(st.sampled_from(("status", "meter", "heartbeat")))
    if which == "status":
        status = Status("d1", draw(st.integers(0, 4)), t, draw(st.sampled_from(STATES)),
                        draw(st.sampled_from(ERROR_CODES)), draw(st.sampled_from(("", "S-1"))),
                        draw(st.sampled_from(("", "start:Remote", "stop:EVDisconnected", "maintenance"))))
        return RecordBatch("d1", 5, statuses=(status,))
    if which == "heartbeat":  # Heartbeat.req is empty: the mark is at the received time
        return RecordBatch("d1", 5, health=(Health("d1", 5),))
    seq = draw(SEQ)
    metrics = draw(st.lists(st.sampled_from(PROFILES["charger"].metrics), min_size=1, unique=True))
    value = st.floats(0, 1e7, allow_nan=False, allow_infinity=False)
    return RecordBatch("d1", 5, tuple(Reading("d1", m.name, t, draw(value), 5, seq) for m in metrics))


def batches(profile: Profile) -> st.SearchStrategy[RecordBatch]:
    if profile.codec == "cat1-json":
        return cat1_batch(profile)
    if profile.codec.startswith("nbiot-frame"):
        return nbiot_batch(profile)
    return charger_batch()


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_every_profile_round_trips(data: st.DataObject) -> None:
    for profile in PROFILES.values():
        batch = data.draw(batches(profile), label=profile.kind)
        codec = codec_named(profile.codec)
        decoded = codec.decode("d1", codec.encode(batch), 5)
        assert decoded == batch, profile.kind


@settings(max_examples=100, deadline=None)
@given(nbiot_batch(PROFILES["meter"]), st.data())
def test_nbiot_frame_checks_crc_and_length(batch: RecordBatch, data: st.DataObject) -> None:
    frame = codec_named("nbiot-frame").encode(batch)
    # Hex text decodes to the same records.
    assert codec_named("nbiot-frame").decode("d1", binascii.hexlify(frame), 5) == batch
    # Any single flipped bit in the body or CRC is caught.
    i = data.draw(st.integers(1, len(frame) - 1))
    bit = data.draw(st.integers(0, 7))
    corrupted = frame[:i] + bytes((frame[i] ^ (1 << bit),)) + frame[i + 1:]
    out = codec_named("nbiot-frame").decode("d1", corrupted, 5)
    assert isinstance(out, DecodeError)
    assert out.reason_code in (BAD_CRC, TRUNCATED, MALFORMED, UNKNOWN_METRIC, BAD_TIMESTAMP)
    # Every proper prefix is truncated.
    cut = data.draw(st.integers(1, len(frame) - 1))
    out = codec_named("nbiot-frame").decode("d1", frame[:cut], 5)
    assert isinstance(out, DecodeError) and out.reason_code == TRUNCATED


def test_nbiot_sequence_number_is_carried_and_wraps() -> None:
    r = Reading("d1", "pm25", BASE_S * 10**9, 12.5, 5, 2**32 - 1)
    codec = codec_named("nbiot-frame")
    out = codec.decode("d1", codec.encode(RecordBatch("d1", 5, (r,))), 5)
    assert isinstance(out, RecordBatch) and out.readings[0].seq == 2**32 - 1
    frame = encode_frame([r], None, 2**32)  # wraps to 0
    out = codec.decode("d1", frame, 5)
    assert isinstance(out, RecordBatch) and out.readings[0].seq == 0


def _with_crc(body: bytes) -> bytes:
    return body + crc16(body).to_bytes(2, "big")


def test_nbiot_frame_reason_codes() -> None:
    codec = codec_named("nbiot-frame")
    good = encode_frame([Reading("d1", "pm25", BASE_S * 10**9, 1.0, 0, 1)], None, 1)
    assert codec.decode("d1", b"\x02" + good[1:], 0) == DecodeError(
        UNSUPPORTED_VERSION, "frame version 2, expected 1")
    unknown_tag = good[:14] + b"\x7f" + good[15:-2]  # header 11 B, sample head 3 B
    assert _reason(codec.decode("d1", _with_crc(unknown_tag), 0)) == UNKNOWN_METRIC
    # Two samples, the second earlier than the first.
    header = bytes((1, 0)) + (1).to_bytes(4, "big") + BASE_S.to_bytes(4, "big") + b"\x02"
    sample = lambda dt: dt.to_bytes(2, "big") + b"\x01\x01\x01\x05"  # noqa: E731
    assert _reason(codec.decode("d1", _with_crc(header + sample(60) + sample(0)), 0)) == BAD_TIMESTAMP
    assert _reason(codec.decode("d1", good + b"\x00", 0)) in (MALFORMED, BAD_CRC)
    assert _reason(codec.decode("d1", good + b" " * 70_000, 0)) == OVERSIZE
    assert _reason(codec.decode("d1", b"", 0)) == TRUNCATED


def _reason(out: RecordBatch | DecodeError) -> str:
    assert isinstance(out, DecodeError), out
    return out.reason_code


def test_charger_reason_codes() -> None:
    codec = codec_named("charger-ocpp")
    assert _reason(codec.decode("c", b"{not json", 0)) == MALFORMED
    assert _reason(codec.decode("c", b'[2,"1","Authorize",{}]', 0)) == UNSUPPORTED_MESSAGE
    assert _reason(codec.decode("c", b'[3,"1","Heartbeat",{}]', 0)) == UNSUPPORTED_MESSAGE
    assert codec.decode("c", b'[2,"1","Heartbeat",{}]', 7) == RecordBatch("c", 7, health=(Health("c", 7),))
    bad_state = b'[2,"1","StatusNotification",{"connectorId":1,"status":"Dancing",' \
                b'"errorCode":"NoError","timestamp":"2025-01-01T00:00:00.000Z"}]'
    assert _reason(codec.decode("c", bad_state, 0)) == MALFORMED
    meter = b'[2,"1","MeterValues",{"connectorId":1,"meterValue":[{"timestamp":' \
            b'"2025-01-01T00:00:00.000Z","sampledValue":[{"value":"1","measurand":"Dance.Moves"}]}]}]'
    assert _reason(codec.decode("c", meter, 0)) == UNKNOWN_METRIC


def test_every_profile_names_a_codec_and_codecs_know_their_metrics() -> None:
    for profile in PROFILES.values():
        assert profile.codec in CODECS
        if profile.codec.startswith("nbiot-frame"):
            assert {m.name for m in profile.metrics} <= set(METRIC_TAGS)


# -- the load generator's fast encode paths: byte-identical to the codecs -------------------

RAW = st.one_of(  # frame values around every TLV size boundary, and anywhere in 32 bits
    st.integers(-(2**31), 2**31 - 1),
    st.sampled_from([-(2**31), -32769, -32768, -129, -128, -1, 0, 127, 128, 32767, 32768, 2**31 - 1]),
    st.integers(-300, 300), st.integers(100, 40_000),
)


def test_crc16_is_ccitt_false() -> None:
    """binascii.crc_hqx with init 0xFFFF is CRC-16/CCITT-FALSE: its check value for "123456789"."""
    assert crc16(b"123456789") == 0x29B1
    assert binascii.crc_hqx(b"123456789", 0xFFFF) == 0x29B1


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_frame_layout_packs_exactly_what_the_codec_encodes(data: st.DataObject) -> None:
    profile = data.draw(st.sampled_from([p for p in PROFILES.values() if p.network == "nb-iot"]))
    names = tuple(m.name for m in profile.metrics)
    samples = data.draw(st.integers(1, 12))
    step = data.draw(st.integers(1, 65535 // max(1, samples - 1) if samples > 1 else 65535))
    dts = [k * step for k in range(samples)]
    with_health = data.draw(st.booleans())
    hex_text = profile.codec == "nbiot-frame-hex"
    layout = FrameLayout(names, dts, dts[-1] if with_health else None, hex_text=hex_text)
    raws = data.draw(st.lists(RAW, min_size=samples * len(names), max_size=samples * len(names)))
    base, seq = data.draw(st.integers(1, 2**32 - 1 - dts[-1])), data.draw(SEQ)
    health = (data.draw(st.integers(-1400, -440)), data.draw(st.integers(-100, 300)),
              data.draw(st.integers(0, 2)), data.draw(st.integers(2500, 3700))) if with_health else None
    nm = len(names)
    readings = [Reading("d1", names[j], (base + dt) * 10**9, raws[k * nm + j] / layout.scales[j], 0, seq)
                for k, dt in enumerate(dts) for j in range(nm)]
    h = () if health is None else (Health("d1", (base + dts[-1]) * 10**9, health[0] / 10,
                                          health[1] / 10, health[2], health[3] / 1000),)
    batch = RecordBatch("d1", 0, tuple(readings), (), h)
    fast = layout.pack(seq, base, raws, health)
    assert fast == codec_named(profile.codec).encode(batch)
    assert codec_named(profile.codec).decode("d1", fast, 0) == batch


def test_frame_layout_refuses_what_the_codec_refuses() -> None:
    layout = FrameLayout(("pm25",), [0], 0)
    with pytest.raises(ValueError):
        layout.pack(1, BASE_S, [2**31], (-900, 100, 0, 3600))  # does not fit 32 bits
    with pytest.raises(ValueError):
        layout.pack(1, 0, [5], (-900, 100, 0, 3600))  # base_time 0
    with pytest.raises(ValueError):
        layout.pack(1, BASE_S, [5], None)  # the layout has a health block
    with pytest.raises(ValueError):
        FrameLayout(("pm25", "no_such_metric"), [0], None)
    with pytest.raises(ValueError):
        FrameLayout(("pm25",), [0, 300, 300], None)  # two samples at one time


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_json_template_packs_exactly_what_the_codec_encodes(data: st.DataObject) -> None:
    profile = data.draw(st.sampled_from([p for p in PROFILES.values() if p.codec == "cat1-json"]))
    names = tuple(m.name for m in profile.metrics)
    # the simulators' values: 0.01 resolution, within (and a little beyond) profile ranges
    values = [data.draw(st.integers(-10**9, 10**9)) / 100 for _ in names]
    t_ms, seq = data.draw(st.integers(1, 2**41)), data.draw(SEQ)
    batch = RecordBatch("d1", 0, tuple(Reading("d1", m, t_ms * 1_000_000, v, 0, seq)
                                        for m, v in zip(names, values, strict=True)))
    fast = JsonTemplate(names).pack(seq, t_ms, values)
    assert fast == codec_named("cat1-json").encode(batch)
    assert codec_named("cat1-json").decode("d1", fast, 0) == batch


def _iso_ms_reference(time_ns: int) -> str:  # the strftime original of charger_ocpp.iso_ms
    ms = time_ns // 1_000_000
    stamp = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(milliseconds=ms)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


@settings(max_examples=500, deadline=None)
@given(st.integers(0, 4_102_444_800_000).map(lambda ms: ms * 1_000_000 + 123))
def test_iso_ms_matches_the_strftime_reference(time_ns: int) -> None:
    assert iso_ms(time_ns) == _iso_ms_reference(time_ns)
    assert parse_iso_ns(iso_ms(time_ns)) == time_ns - 123
