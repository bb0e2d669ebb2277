"""The writer's row building: readings for COPY, and one state record per device, merged
across writes until a flush."""

from __future__ import annotations

import gc
import random
import struct

import pytest

from citysense.records import Health, Reading, RecordBatch
from storage import copy_binary
from storage.latest_state import PG_EPOCH_US, PendingStates
from storage.write_rows import WriteRows

S = 1_000_000_000  # ns per second
T = 1_900_000_000 * S


def _array(raw: object) -> tuple[int, list[object]]:
    """Decode PostgreSQL's binary array format: (element type oid, elements)."""
    assert isinstance(raw, bytes)
    ndim, flags, oid = struct.unpack_from(">iii", raw)
    assert flags == 0
    if ndim == 0:
        assert len(raw) == 12
        return oid, []
    n, lower = struct.unpack_from(">ii", raw, 12)
    assert (ndim, lower) == (1, 1)
    out: list[object] = []
    at = 20
    for _ in range(n):
        (size,) = struct.unpack_from(">i", raw, at)
        item = raw[at + 4:at + 4 + size]
        out.append(item.decode() if oid == 25 else struct.unpack(">q" if oid == 20 else ">d", item)[0])
        at += 4 + size
    assert at == len(raw)
    return oid, out


def _field(data: bytes, at: int) -> tuple[bytes | None, int]:
    """One field at ``at``: its size (-1 for NULL), then its bytes; and where the next starts."""
    (size,) = struct.unpack_from(">i", data, at)
    at += 4
    if size == -1:
        return None, at
    return data[at:at + size], at + size


def _copy_rows(data: bytes, types: str) -> list[tuple[object, ...]]:
    """Decode binary COPY rows (no header): ``types`` has a letter per field, t(ext), q (int8),
    d (float8), h (int2) or r(aw bytes)."""
    rows: list[tuple[object, ...]] = []
    at = 0
    while at < len(data):
        (n,) = struct.unpack_from(">h", data, at)
        assert n == len(types)
        at += 2
        row: list[object] = []
        for kind in types:
            raw, at = _field(data, at)
            if raw is None or kind == "r":
                row.append(raw)
            elif kind == "t":
                row.append(raw.decode())
            else:
                assert len(raw) == struct.calcsize(">" + kind)
                row.append(struct.unpack(">" + kind, raw)[0])
        rows.append(tuple(row))
    assert at == len(data)
    return rows


def _readings(rows: WriteRows) -> list[tuple[object, ...]]:
    return _copy_rows(bytes(rows.readings), "ttqdqqh")


_TYPE_OID = 424242  # stands for device_batch_state's oid, which each database assigns
# device_batch_state's columns (schema migration 4): text, 2 timestamptz, 4 arrays, 2 timestamptz
_COLUMN_OIDS = [25, 1184, 1184, 1009, 1016, 1022, 1016, 1184, 1184]


def _device_rows(rows: WriteRows | PendingStates) -> list[tuple[object, ...]]:
    """Decode the binary array of device_batch_state records: a tuple per record (timestamptz
    as PG-epoch microseconds, arrays as their raw binary)."""
    if isinstance(rows, WriteRows):
        pending = PendingStates()
        pending.absorb(rows.devices)
        rows = pending
    data = rows.input(_TYPE_OID)
    ndim, flags, oid = struct.unpack_from(">iii", data)
    assert (flags, oid) == (0, _TYPE_OID)
    if ndim == 0:
        assert len(data) == 12
        return []
    n, lower = struct.unpack_from(">ii", data, 12)
    assert (ndim, lower) == (1, 1)
    at = 20
    out: list[tuple[object, ...]] = []
    for _ in range(n):
        size, columns = struct.unpack_from(">ii", data, at)
        end = at + 4 + size
        at += 8
        assert columns == len(_COLUMN_OIDS)
        row: list[object] = []
        for want in _COLUMN_OIDS:
            (oid,) = struct.unpack_from(">i", data, at)
            assert oid == want
            raw, at = _field(data, at + 4)
            if raw is None or oid not in (25, 1184):
                row.append(raw)
            else:
                row.append(raw.decode() if oid == 25 else struct.unpack(">q", raw)[0])
        assert at == end
        out.append(tuple(row))
    assert at == len(data)
    return out


def _batch(device: str, *readings: tuple[str, int, float], received: int = T + 60 * S) -> RecordBatch:
    return RecordBatch(device, received, tuple(Reading(device, m, t, v, received) for m, t, v in readings))


def test_device_row_holds_the_newest_value_per_metric_sorted_by_metric() -> None:
    rows = WriteRows.of([
        _batch("a", ("pm25", T, 1.0), ("no2", T, 2.0)),
        _batch("a", ("pm25", T + 10 * S, 3.0), received=T + 70 * S),
        _batch("a", ("pm25", T - 10 * S, 4.0), ("no2", T, 9.0)),  # older, and an equal time
    ])
    (device, seen, last, metrics, times, values, received, first, newest), = _device_rows(rows)
    us = T // 1000
    assert device == "a"
    assert _array(metrics) == (25, ["no2", "pm25"])
    assert _array(values) == (701, [2.0, 3.0])
    assert _array(times) == (20, [us, us + 10_000_000])  # Unix microseconds inside the arrays
    assert _array(received) == (20, [(T + 60 * S) // 1000, (T + 70 * S) // 1000])
    # the stage's own times are PostgreSQL-epoch microseconds (binary timestamptz)
    assert seen == (T + 70 * S) // 1000 - PG_EPOCH_US
    # first and newest: the oldest and newest of the values it carries (not of all readings)
    assert (last, first, newest) == (us + 10_000_000 - PG_EPOCH_US, us - PG_EPOCH_US,
                                     us + 10_000_000 - PG_EPOCH_US)
    assert rows.reading_count == 5
    shift = PG_EPOCH_US
    assert _readings(rows)[:3] == [
        ("a", "pm25", us - shift, 1.0, (T + 60 * S) // 1000 - shift, -1, 0),
        ("a", "no2", us - shift, 2.0, (T + 60 * S) // 1000 - shift, -1, 0),
        ("a", "pm25", us + 10_000_000 - shift, 3.0, (T + 70 * S) // 1000 - shift, -1, 0)]
    assert rows.minutes == {(us - PG_EPOCH_US) // 60_000_000 * 60_000_000,
                            (us - 10_000_000 - PG_EPOCH_US) // 60_000_000 * 60_000_000}


@pytest.mark.parametrize(("readings", "expected"), [
    ((("pm25", T, 1.0), ("pm25", T, 5.0)), [1.0]),  # one time, a metric twice: the first stays
    ((("pm25", T, 1.0), ("pm25", T + S, 2.0)), [2.0]),  # two times in one uplink: the newer
    ((("no2", T, 1.0), ("pm25", T, 2.0), ("co", T, 3.0)), [3.0, 1.0, 2.0]),  # sorted by metric
])
def test_one_uplink_gives_the_newest_value_per_metric(
        readings: tuple[tuple[str, int, float], ...], expected: list[float]) -> None:
    (row,) = _device_rows(WriteRows.of([_batch("a", *readings)]))
    assert _array(row[5])[1] == expected
    assert _array(row[3])[1] == sorted({m for m, _, _ in readings})


def test_a_device_without_readings_stages_empty_arrays() -> None:
    batch = RecordBatch("nb", T, health=(Health("nb", T - 5 * S, -100.0, 3.0, 1, 3.6),))
    (row,) = _device_rows(WriteRows.of([batch]))
    assert row[:3] == ("nb", T // 1000 - PG_EPOCH_US, (T - 5 * S) // 1000 - PG_EPOCH_US)
    assert [_array(a) for a in row[3:7]] == [(25, []), (20, []), (701, []), (20, [])]
    assert row[7:] == (None, None)


def test_readings_are_binary_copy_rows_postgres_reads() -> None:
    """Seq and quality as stored, a gateway's reading under its own device, UTF-8 names."""
    gateway = RecordBatch("gw", T, (Reading("gw", "温度", T, 21.5, T, 2**40, 3),
                                    Reading("leaf-7", "pm25", T - S, 4.0, T, 7, 0)))
    rows = WriteRows.of([gateway])
    us, shift = T // 1000, PG_EPOCH_US
    assert _readings(rows) == [("gw", "温度", us - shift, 21.5, us - shift, 2**40, 3),
                               ("leaf-7", "pm25", us - 1_000_000 - shift, 4.0, us - shift, 7, 0)]
    assert [r[0] for r in _device_rows(rows)] == ["gw", "leaf-7"]
    assert copy_binary.HEADER.startswith(b"PGCOPY\n\xff\r\n\x00") and len(copy_binary.HEADER) == 19


def test_a_seq_out_of_range_of_int8_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        WriteRows.of([RecordBatch("a", T, (Reading("a", "pm25", T, 1.0, T, 2**63),))])


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_a_value_that_is_not_finite_is_refused(value: float) -> None:
    with pytest.raises(ValueError, match="not finite"):
        WriteRows.of([_batch("a", ("pm25", T, value))])


def test_the_garbage_collector_is_left_as_it_was() -> None:
    assert gc.isenabled()
    WriteRows.of([_batch("a", ("pm25", T, 1.0))])
    assert gc.isenabled()
    with pytest.raises(ValueError):
        WriteRows.of([_batch("a", ("pm25", T, float("nan")))])
    assert gc.isenabled()
    gc.disable()
    try:
        WriteRows.of([_batch("a", ("pm25", T, 1.0))])
        assert not gc.isenabled()
    finally:
        gc.enable()


def _decoded(rows: WriteRows | PendingStates) -> list[tuple[object, ...]]:
    return [(*r[:3], *[_array(a) for a in r[3:7]], *r[7:]) for r in _device_rows(rows)]


def _random_stream(rng: random.Random, n: int) -> list[RecordBatch]:
    """Uplinks of 6 devices with overlapping metric sets, repeated and late times, equal
    times with other values, a repeated metric in one uplink, a gateway's foreign readings."""
    sets = [("no2", "pm25"), ("no2", "pm25"), ("co", "pm25"), ("pm25", "pm25")]
    out: list[RecordBatch] = []
    for i in range(n):
        device = f"d{rng.randrange(6)}"
        received = T + rng.randrange(100) * S
        if rng.random() < 0.1:
            out.append(RecordBatch(device, received, health=(Health(device, T + rng.randrange(100) * S,
                                                                    -90.0, 5.0, 0, 3.6),)))
            continue
        one_time = T + rng.randrange(20) * S
        readings = [Reading(device, m, one_time if rng.random() < 0.8 else T + rng.randrange(20) * S,
                            float(i * 10 + k), received) for k, m in enumerate(rng.choice(sets))]
        if rng.random() < 0.1:
            readings.append(Reading(f"leaf{rng.randrange(2)}", "pm25", one_time, float(i), received))
        out.append(RecordBatch(device, received, tuple(readings)))
    return out


@pytest.mark.parametrize("seed", range(30))
def test_states_merged_across_writes_equal_one_write_of_them_all(seed: int) -> None:
    """The sink folds each committed write into its pending states: that must give the
    records one write of the whole stream gives (newest per metric, ties keep the first)."""
    rng = random.Random(seed)
    stream = _random_stream(rng, 60)
    pending = PendingStates()
    at = 0
    while at < len(stream):
        step = rng.randrange(1, 12)
        pending.absorb(WriteRows.of(stream[at:at + step]).devices)
        at += step
    assert _decoded(pending) == _decoded(WriteRows.of(stream))


def test_a_failed_flush_puts_its_states_back_under_the_later_ones() -> None:
    pending = PendingStates()
    first = [_batch("a", ("pm25", T + 5 * S, 1.0)), _batch("b", ("pm25", T, 7.0))]
    pending.absorb(WriteRows.of(first).devices)
    taken = pending.take()
    assert len(pending) == 0
    # written while the flush was in flight: newer for a (wins), equal time for b (loses)
    later = [_batch("a", ("pm25", T + 9 * S, 2.0)), _batch("b", ("pm25", T, 8.0))]
    pending.absorb(WriteRows.of(later).devices)
    pending.restore(taken)
    values = {r[0]: _array(r[5])[1] for r in _device_rows(pending)}
    assert values == {"a": [2.0], "b": [7.0]}
