"""The writer's row building: readings for COPY and one state row per device."""

from __future__ import annotations

import gc
import struct

import pytest

from citysense.records import Health, Reading, RecordBatch
from storage.write_rows import PG_EPOCH_US, WriteRows

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


def _batch(device: str, *readings: tuple[str, int, float], received: int = T + 60 * S) -> RecordBatch:
    return RecordBatch(device, received, tuple(Reading(device, m, t, v, received) for m, t, v in readings))


def test_device_row_holds_the_newest_value_per_metric_sorted_by_metric() -> None:
    rows = WriteRows.of([
        _batch("a", ("pm25", T, 1.0), ("no2", T, 2.0)),
        _batch("a", ("pm25", T + 10 * S, 3.0), received=T + 70 * S),
        _batch("a", ("pm25", T - 10 * S, 4.0), ("no2", T, 9.0)),  # older, and an equal time
    ])
    (device, seen, last, metrics, times, values, received, first, newest), = rows.device_rows()
    us = T // 1000
    assert device == "a"
    assert _array(metrics) == (25, ["no2", "pm25"])
    assert _array(values) == (701, [2.0, 3.0])
    assert _array(times) == (20, [us, us + 10_000_000])  # Unix microseconds inside the arrays
    assert _array(received) == (20, [(T + 60 * S) // 1000, (T + 70 * S) // 1000])
    # the stage's own times are PostgreSQL-epoch microseconds (binary timestamptz)
    assert seen == (T + 70 * S) // 1000 - PG_EPOCH_US
    assert (last, first, newest) == (us + 10_000_000 - PG_EPOCH_US, us - 10_000_000 - PG_EPOCH_US,
                                     us + 10_000_000 - PG_EPOCH_US)
    assert len(rows.readings) == 5
    assert rows.minutes == {(us - PG_EPOCH_US) // 60_000_000 * 60_000_000,
                            (us - 10_000_000 - PG_EPOCH_US) // 60_000_000 * 60_000_000}


def test_a_device_without_readings_stages_empty_arrays() -> None:
    batch = RecordBatch("nb", T, health=(Health("nb", T - 5 * S, -100.0, 3.0, 1, 3.6),))
    (row,) = WriteRows.of([batch]).device_rows()
    assert row[:3] == ("nb", T // 1000 - PG_EPOCH_US, (T - 5 * S) // 1000 - PG_EPOCH_US)
    assert [_array(a) for a in row[3:7]] == [(25, []), (20, []), (701, []), (20, [])]
    assert row[7:] == (None, None)


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
