"""LTE-Cat1 JSON payloads.

Wire form (one sample per uplink; Cat1 devices stay connected and report often)::

    {"seq": 42, "ts": 1732190000123, "m": {"pm25": 35.2, "pm10": 61.0}}

``ts`` is the device clock in milliseconds since the Unix epoch; ``seq`` is
the device's uplink counter (0..2**32-1), used for deduplication.

A key given twice (``{"pm25": 1, "pm25": 2}``): the last value wins, as in most
JSON parsers (RFC 8259 leaves it open), and when the values differ the codec
counts a conflict (``conflicts``; the normaliser reports ``conflicting_duplicates``).
Finding them costs one byte count per uplink: only when the number of ``:`` in
the payload differs from the number of keys decoded is it parsed again to look.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from citysense.records import Reading, RecordBatch
from ingest.codecs.base import (
    BAD_TIMESTAMP,
    MALFORMED,
    MAX_PAYLOAD_BYTES,
    MAX_RECORDS_PER_UPLINK,
    MAX_SEQ,
    OVERSIZE,
    DecodeError,
)


class _Payload(msgspec.Struct, frozen=True):
    ts: int
    m: dict[str, float]
    seq: int = -1


_decoder = msgspec.json.Decoder(_Payload)
_encoder = msgspec.json.Encoder()


class JsonTemplate:
    """Cat1 JSON for a fixed list of metrics: the load generator's fast encode path.

    ``pack(seq, ts_ms, values)`` formats a precomputed template instead of
    encoding a struct and a dict. Its bytes equal :meth:`Cat1JsonCodec.encode`
    of readings with those values (same key order, and ``repr`` spells a
    float as msgspec does) for values that are 0 or of magnitude 1e-4..1e16,
    which covers the simulators' values (0.01 resolution, profile ranges);
    ``tests/unit/test_codecs_roundtrip.py`` checks the equivalence.
    """

    __slots__ = ("_fmt", "metrics")

    def __init__(self, metrics: tuple[str, ...]) -> None:
        if not metrics or len(set(metrics)) != len(metrics):
            raise ValueError("a Cat1 JSON template needs distinct metric names")
        for m in metrics:
            if _encoder.encode(m) != f'"{m}"'.encode() or "%" in m:
                raise ValueError(f"metric name {m!r} needs escaping; use Cat1JsonCodec.encode")
        self.metrics = metrics
        self._fmt = '{"ts":%d,"m":{' + ",".join(f'"{m}":%r' for m in metrics) + '},"seq":%d}'

    def pack(self, seq: int, ts_ms: int, values: list[float]) -> bytes:
        return (self._fmt % (ts_ms, *values, seq)).encode()


def conflicting_keys(payload: bytes) -> int:
    """How many keys of the JSON document repeat an earlier key of their object with another value."""
    conflicts = 0

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal conflicts
        seen: dict[str, Any] = {}
        for key, value in items:
            if key in seen and seen[key] != value:
                conflicts += 1
            seen[key] = value
        return seen

    try:
        json.loads(payload, object_pairs_hook=pairs)
    except (ValueError, RecursionError):
        return 0
    return conflicts


class Cat1JsonCodec:
    name = "cat1-json"

    def __init__(self) -> None:
        self.conflicts = 0  # keys given twice with different values (the last wins)

    def encode(self, batch: RecordBatch) -> bytes:
        if not batch.readings:
            raise ValueError("a Cat1 JSON uplink carries at least one reading")
        first = batch.readings[0]
        values = {r.metric: r.value for r in batch.readings}
        return _encoder.encode(_Payload(ts=first.time_ns // 1_000_000, m=values, seq=first.seq))

    def decode(self, device_id: str, payload: bytes, received_ns: int) -> RecordBatch | DecodeError:
        if len(payload) > MAX_PAYLOAD_BYTES:
            return DecodeError(OVERSIZE, f"{len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
        try:
            body = _decoder.decode(payload)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # msgspec: bad UTF-8 in a key
            return DecodeError(MALFORMED, f"not a Cat1 JSON uplink: {exc}")
        if body.ts <= 0:
            return DecodeError(
                BAD_TIMESTAMP, f"ts must be positive epoch milliseconds, got {body.ts}"
            )
        if not body.m:
            return DecodeError(MALFORMED, "uplink carries no readings ('m' is empty)")
        if not -1 <= body.seq <= MAX_SEQ:
            return DecodeError(MALFORMED, f"seq must be a u32 uplink counter, got {body.seq}")
        if len(body.m) > MAX_RECORDS_PER_UPLINK:
            return DecodeError(OVERSIZE, f"{len(body.m)} readings in one uplink")
        if payload.count(b":") != 2 + (body.seq != -1) + len(body.m):  # a repeated key, or extras
            self.conflicts += conflicting_keys(payload)
        time_ns = body.ts * 1_000_000
        seq = body.seq
        readings = tuple([Reading(device_id, metric, time_ns, value, received_ns, seq)
                          for metric, value in body.m.items()])
        return RecordBatch(device_id=device_id, received_ns=received_ns, readings=readings)
