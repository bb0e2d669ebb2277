"""Device state: last seen, and the latest value per metric merged into one row per device.

The sink keeps each write's state pending until ``flush()``. Every test runs
with a flush after each write (the table's merge) and with one flush only
before each read (merged in memory first): both must give the same rows.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import pytest

from citysense.records import Reading, RecordBatch
from storage import queries
from storage.base import WriteResult
from tests.storage.conftest import Store
from tests.storage.factories import T0, charger, ns, uplink

pytestmark = pytest.mark.services

MIN = timedelta(minutes=1)


@dataclass
class Writes:
    store: Store
    flush_each: bool

    async def __call__(self, batches: Sequence[RecordBatch]) -> WriteResult:
        result = await self.store.sink.write(batches)
        if self.flush_each:
            await self.store.sink.flush()
        return result


@pytest.fixture(params=["flush each write", "flush before reading"])
def write(store: Store, request: pytest.FixtureRequest) -> Writes:
    return Writes(store, request.param == "flush each write")


async def _latest(store: Store, device: str) -> dict[str, tuple[object, float]]:
    await store.sink.flush()
    async with store.pool.connection() as conn:
        values = await queries.latest_per_device(conn, device_ids=[device])
    return {v.metric: (v.time, v.value) for v in values}


async def test_a_late_uplink_updates_only_the_metrics_it_has_newer(store: Store, write: Writes) -> None:
    await write([uplink("b-1", T0 + 10 * MIN, {"strain": 1.0})])
    # older than the device's newest time, but the first no2 ever: it is the latest no2
    await write([uplink("b-1", T0 + 2 * MIN, {"tilt": 2.0})])
    assert await _latest(store, "b-1") == {"strain": (T0 + 10 * MIN, 1.0), "tilt": (T0 + 2 * MIN, 2.0)}
    # strain older than stored (kept), tilt newer than stored (taken)
    await write([uplink("b-1", T0 + 5 * MIN, {"strain": 3.0, "tilt": 4.0})])
    assert await _latest(store, "b-1") == {"strain": (T0 + 10 * MIN, 1.0), "tilt": (T0 + 5 * MIN, 4.0)}


async def test_an_uplink_with_fewer_metrics_keeps_the_others(store: Store, write: Writes) -> None:
    await write([uplink("a-1", T0, {"pm25": 1.0, "no2": 2.0})])
    await write([uplink("a-1", T0 + MIN, {"pm25": 3.0})])
    await write([uplink("a-1", T0 + 2 * MIN, {"o3": 4.0, "pm25": 5.0})])
    assert await _latest(store, "a-1") == {
        "no2": (T0, 2.0), "o3": (T0 + 2 * MIN, 4.0), "pm25": (T0 + 2 * MIN, 5.0)}


async def test_the_same_time_twice_keeps_the_first_value_as_readings_does(
        store: Store, write: Writes) -> None:
    await write([uplink("a-1", T0, {"pm25": 1.0})])
    await write([uplink("a-1", T0, {"pm25": 9.0}), uplink("a-1", T0, {"pm25": 8.0})])
    assert await _latest(store, "a-1") == {"pm25": (T0, 1.0)}
    # merged beside a metric that is new: the tie on pm25 still keeps the stored value
    await write([uplink("a-1", T0, {"pm25": 7.0, "no2": 2.0})])
    assert await _latest(store, "a-1") == {"no2": (T0, 2.0), "pm25": (T0, 1.0)}
    async with store.pool.connection() as conn:
        cur = await conn.execute("SELECT value FROM readings WHERE device_id = 'a-1' AND metric = 'pm25'")
        assert await cur.fetchall() == [(1.0,)]


async def test_a_status_only_uplink_moves_last_seen_and_keeps_values(store: Store, write: Writes) -> None:
    await write([uplink("ev-1", T0, {"power_kw": 7.0})])
    await write([charger("ev-1", T0 + 5 * MIN, 1, "Charging", "s1")])
    assert await _latest(store, "ev-1") == {"power_kw": (T0, 7.0)}
    async with store.pool.connection() as conn:
        cur = await conn.execute("SELECT last_seen, last_time FROM device_state WHERE device_id = 'ev-1'")
        assert await cur.fetchone() == (T0 + 5 * MIN, T0 + 5 * MIN)


async def test_a_gateway_batch_updates_each_device_it_carries(store: Store, write: Writes) -> None:
    batch = RecordBatch("gw-1", ns(T0 + MIN), readings=(
        Reading("gw-1", "rssi", ns(T0), -70.0, ns(T0 + MIN)),
        Reading("node-7", "level", ns(T0), 1.25, ns(T0 + MIN)),
    ))
    await write([batch])
    assert await _latest(store, "gw-1") == {"rssi": (T0, -70.0)}
    assert await _latest(store, "node-7") == {"level": (T0, 1.25)}


async def test_latest_state_matches_the_readings_whatever_the_order(store: Store, write: Writes) -> None:
    """Uplinks shuffled, split into batches at random and partly re-delivered: the latest value
    of every (device, metric) is still the newest reading stored for it."""
    rng = random.Random(20261121)
    metrics = ("a", "b", "c", "d")
    stream: list[RecordBatch] = []
    for device in (f"d-{i}" for i in range(12)):
        for step in range(15):
            chosen = rng.sample(metrics, rng.randint(1, len(metrics)))
            values = {m: float(step * 10 + metrics.index(m)) for m in chosen}  # distinct per time
            stream.append(uplink(device, T0 + step * MIN, values, received=T0 + 20 * MIN))
    rng.shuffle(stream)
    position = 0
    while position < len(stream):
        size = rng.randint(1, 25)
        await write(stream[position:position + size])
        if rng.random() < 0.3:  # a re-delivery of part of what was just written
            await write(stream[max(0, position - 10):position + size])
        position += size
    await store.sink.flush()
    async with store.pool.connection() as conn:
        latest = await queries.latest_per_device(conn)
        cur = await conn.execute(
            """SELECT DISTINCT ON (device_id, metric) device_id, metric, time, value FROM readings
               ORDER BY device_id, metric, time DESC""")
        newest = await cur.fetchall()
    assert [(v.device_id, v.metric, v.time, v.value) for v in latest] == newest
    assert len(newest) > 12 * 3


async def test_a_batch_the_database_refuses_leaves_no_device_state(store: Store, write: Writes) -> None:
    """Only a committed write's state is kept for the flush: a refused one leaves none."""
    from storage.exceptions import StorageRejectedError

    huge_seq = RecordBatch("a-2", ns(T0), (Reading("a-2", "pm25", ns(T0), 2.0, ns(T0), 2**63),))
    # enough good neighbours that the COPY has sent several slices before the bad record
    neighbours = [uplink(f"b-{i:03d}", T0, {"pm25": 1.0}) for i in range(250)]
    with pytest.raises(StorageRejectedError):
        await write([uplink("a-1", T0, {"pm25": 1.0}), *neighbours, huge_seq])
    await store.sink.flush()
    assert store.sink.pending_devices == 0
    async with store.pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) FROM device_state")
        assert await cur.fetchone() == (0,)
        cur = await conn.execute("SELECT count(*) FROM readings")
        assert await cur.fetchone() == (0,)
    # and the sink is still usable, with nothing half-remembered about a-1
    await write([uplink("a-1", T0, {"pm25": 1.0})])
    assert await _latest(store, "a-1") == {"pm25": (T0, 1.0)}


async def test_device_state_waits_for_the_flush(store: Store) -> None:
    await store.sink.write([uplink("a-1", T0, {"pm25": 1.0}), uplink("a-2", T0, {"pm25": 2.0})])
    await store.sink.write([uplink("a-1", T0 + MIN, {"pm25": 3.0})])
    assert store.sink.pending_devices == 2
    async with store.pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) FROM device_state")
        assert await cur.fetchone() == (0,)
    await store.sink.flush()
    assert store.sink.pending_devices == 0
    assert await _latest(store, "a-1") == {"pm25": (T0 + MIN, 3.0)}
    await store.sink.flush()  # nothing pending: nothing to do
