"""The NB-IoT fast path (``nbiot_layout``) accepts exactly what the general walk accepts, with the
same records: a frame of a learned shape, and every one-byte change of it, decode the same both ways."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from citysense.records import Health, Reading
from ingest.codecs import nbiot_frame
from ingest.codecs.nbiot_frame import TAGS, _walk, decode_frame, encode_frame
from ingest.codecs.nbiot_layout import Layouts
from ingest.profiles import PROFILES
from tests.unit.test_codecs_roundtrip import nbiot_batch

NBIOT = [p for p in PROFILES.values() if p.network == "nb-iot"]
RECEIVED = 1_700_000_000 * 10**9


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    batch = draw(nbiot_batch(draw(st.sampled_from(NBIOT))))
    return encode_frame(batch.readings, batch.health[0] if batch.health else None, batch.readings[0].seq)


@settings(max_examples=200, deadline=None)
@given(frames(), st.integers(0, 10**6), st.integers(0, 255))
def test_fast_path_equals_the_walk(frame: bytes, where: int, byte: int) -> None:
    layouts = Layouts(TAGS)
    walked = _walk("d1", frame, RECEIVED)
    assert layouts.decode("d1", frame, RECEIVED) is None  # nothing learned yet
    layouts.learn(frame)
    assert layouts.decode("d1", frame, RECEIVED) == walked
    changed = bytearray(frame)
    changed[where % len(frame)] = byte
    mutated = bytes(changed)
    fast = layouts.decode("d1", mutated, RECEIVED)
    if fast is not None:  # accepted by the fast path: the walk accepts it too, with the same records
        assert fast == _walk("d1", mutated, RECEIVED)


def test_decode_frame_learns_and_keeps_refusing() -> None:
    t = 1_699_999_000 * 10**9
    readings = [Reading("d1", m, t + k * 3600 * 10**9, 12.5 + k, 0, 7)
                for k in range(4) for m in ("water_m3", "gas_m3", "heat_gj", "power_kwh")]
    frame = encode_frame(readings, Health("d1", t + 4 * 3600 * 10**9, -99.0, 4.0, 1, 3.6), 7)
    first = decode_frame("d1", frame, RECEIVED)
    assert decode_frame("d1", frame, RECEIVED) == first == _walk("d1", frame, RECEIVED)
    assert len(nbiot_frame._LAYOUTS) >= 1
    bad_crc = frame[:-1] + bytes([frame[-1] ^ 1])
    assert decode_frame("d1", bad_crc, RECEIVED) == _walk("d1", bad_crc, RECEIVED)
    zero_base = frame[:6] + b"\0\0\0\0" + frame[10:-2]
    zero_base += nbiot_frame.crc16(zero_base).to_bytes(2, "big")
    refused = decode_frame("d1", zero_base, RECEIVED)
    assert refused == _walk("d1", zero_base, RECEIVED) and not hasattr(refused, "readings")
