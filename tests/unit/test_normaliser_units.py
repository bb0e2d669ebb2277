"""Unit tests of the normaliser's parts: clock, dedupe, validation, directory, retries, DLQ replay."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from brokers.base import KeyValue, TopicPartition, TopicSpec
from brokers.exceptions import BrokerUnavailableError
from brokers.memory import MemoryBus, MemoryProducer
from citysense.records import (
    QUALITY_CLOCK_CORRECTED,
    QUALITY_LATE,
    Health,
    Reading,
    RecordBatch,
    Status,
    decode_batch,
    decode_dead_letter,
)
from ingest.clock import NS, ClockPolicy, adjust
from ingest.codecs import codec_named
from ingest.codecs.base import DecodeError
from ingest.dedupe import Deduper, Window, uplink_keys
from ingest.directory import StaticDirectory
from ingest.dlq import replay, scan, stats
from ingest.normaliser import Normaliser
from ingest.profiles import AIR_CAT1
from ingest.validate import profile_bounds, validate
from tests.integration.test_normaliser_faults import fault_stream

NOW = 1_750_000_000 * NS
POLICY = ClockPolicy()


def batch(*times: int, received: int = NOW, seq: int = 1) -> RecordBatch:
    return RecordBatch("d", received, tuple(Reading("d", "pm25", t, 1.0, received, seq) for t in times))


def test_plausible_times_are_kept_and_the_batch_is_not_copied() -> None:
    b = batch(NOW - 60 * NS, NOW - 30 * NS)
    assert adjust(b, POLICY, 900 * NS).batch is b


def test_a_clock_ahead_is_moved_to_the_received_time_keeping_the_spacing() -> None:
    out = adjust(batch(NOW + 3600 * NS, NOW + 3900 * NS), POLICY, 900 * NS)
    assert out.corrected
    assert [r.time_ns for r in out.batch.readings] == [NOW - 300 * NS, NOW]
    assert all(r.quality == QUALITY_CLOCK_CORRECTED for r in out.batch.readings)


def test_within_the_tolerance_nothing_moves() -> None:
    b = batch(NOW + 100 * NS)
    assert adjust(b, POLICY, 900 * NS).batch is b


def test_an_unset_clock_is_corrected_and_health_moves_with_it() -> None:
    b = RecordBatch("d", NOW, (Reading("d", "pm25", 5 * NS, 1.0, NOW),), (), (Health("d", 5 * NS),))
    out = adjust(b, POLICY, 900 * NS).batch
    assert out.readings[0].time_ns == NOW and out.health[0].time_ns == NOW


def test_late_data_keeps_its_time_and_is_flagged() -> None:
    out = adjust(batch(NOW - 6 * 3600 * NS, NOW - 10 * NS), POLICY, 900 * NS)
    assert not out.corrected and out.late == 1
    assert [r.time_ns for r in out.batch.readings] == [NOW - 6 * 3600 * NS, NOW - 10 * NS]
    assert [r.quality for r in out.batch.readings] == [QUALITY_LATE, 0]


def test_late_threshold_follows_the_report_interval() -> None:
    assert POLICY.late_after_for(60) == 900 * NS
    assert POLICY.late_after_for(14_400) == 28_800 * NS


def test_window_is_bounded_and_remembers_the_newest_half() -> None:
    w = Window(100)
    for i in range(1000):
        w.add(("d", i, 0))
    assert len(w) <= 100
    assert all(("d", i, 0) in w for i in range(950, 1000))
    assert ("d", 0, 0) not in w


def test_keys_are_staged_until_commit_and_forgotten_on_discard() -> None:
    tp = TopicPartition("raw", 0)
    d = Deduper(100)
    keys = uplink_keys(batch(NOW))
    assert not d.is_duplicate(tp, keys)
    assert d.is_duplicate(tp, keys)  # same batch
    d.discard()  # the batch failed: a retry must not see its own keys
    assert not d.is_duplicate(tp, keys)
    d.commit()
    assert d.is_duplicate(tp, keys)
    d.retain(frozenset())  # partition revoked: state dropped
    assert not d.is_duplicate(tp, keys)


def test_a_counter_reset_after_a_reboot_is_not_a_duplicate() -> None:
    assert uplink_keys(batch(NOW, seq=0)) != uplink_keys(batch(NOW + 60 * NS, seq=0))


def test_a_reboot_with_an_unset_clock_is_not_a_duplicate_but_a_resend_is() -> None:
    # Counter and clock both restart, so seq and device time repeat: only the bytes differ.
    codec = codec_named("cat1-json")
    first = b'{"ts": 1000, "seq": 1, "m": {"pm25": 12.0}}'
    after_reboot = b'{"ts": 1000, "seq": 1, "m": {"pm25": 87.0}}'
    keys = [uplink_keys(_decoded(codec.decode("a", p, NOW)), p) for p in (first, after_reboot, first)]
    assert keys[0] != keys[1] and keys[0] == keys[2]


def _decoded(out: RecordBatch | DecodeError) -> RecordBatch:
    assert isinstance(out, RecordBatch)
    return out


def test_unnumbered_uplinks_are_keyed_per_record() -> None:
    b = RecordBatch("c", NOW, statuses=(Status("c", 1, NOW, "Charging"),))
    assert uplink_keys(b) == (("c", "@status", 1, NOW, "Charging"),)


def test_one_bad_reading_does_not_take_the_good_ones_with_it() -> None:
    rs = (Reading("d", "pm25", NOW, 5000.0, NOW), Reading("d", "pm10", NOW, 50.0, NOW),
          Reading("d", "nope", NOW, 1.0, NOW), Reading("d", "o3", NOW, float("nan"), NOW))
    kept, rejected = validate("air", profile_bounds(AIR_CAT1), RecordBatch("d", NOW, rs))
    assert [r.metric for r in kept.readings] == ["pm10"]
    assert [r.reason for r in rejected] == ["out_of_range", "unknown_metric", "out_of_range"]


def test_health_and_status_are_validated() -> None:
    b = RecordBatch("d", NOW, statuses=(Status("d", 1, NOW, "Exploding"),),
                    health=(Health("d", NOW, rsrp_dbm=20.0),))
    kept, rejected = validate("charger", {}, b)
    assert not kept.statuses and not kept.health
    assert {r.reason for r in rejected} == {"invalid_state", "out_of_range"}


def test_directory_reads_an_exported_registry() -> None:
    d = StaticDirectory.from_registry_json(
        b'{"scenario": "x", "sites": [{"site_id": "s"}], '
        b'"devices": [{"device_id": "a-1", "kind": "air", "lat": 1.0}]}')
    assert d.kind_of("a-1") == "air" and d.kind_of("b") is None and len(d) == 1


class FlakyProducer(MemoryProducer):
    failures = 1

    async def send_batch(self, topic: str, records: Sequence[KeyValue]) -> None:
        if topic == "rd" and FlakyProducer.failures:
            FlakyProducer.failures -= 1
            await super().send_batch(topic, list(records)[: len(records) // 2])  # half landed
            raise BrokerUnavailableError("broker went away mid-batch")
        await super().send_batch(topic, records)


async def test_a_failed_produce_is_retried_without_losing_anything() -> None:
    bus = MemoryBus()
    await bus.create_topics([TopicSpec("raw", 2), TopicSpec("rd", 2), TopicSpec("dlq", 1)])
    stream = fault_stream(air_devices=5, env_devices=4, rounds=3)
    p = bus.producer()
    await p.start()
    await p.send_batch("raw", stream.records)
    norm = Normaliser(bus, raw_topic="raw", readings_topic="rd", dlq_topic="dlq", group="g",
                      directory=StaticDirectory(stream.devices))
    norm._producer = FlakyProducer(bus)
    norm.stage._retry_backoff_s = 0.01
    task = asyncio.create_task(norm.run())
    for _ in range(300):
        if norm.stage.records_committed >= len(stream.records):
            break
        await asyncio.sleep(0.01)
    norm.request_stop()
    await task
    got = {(r.device_id, r.metric, r.time_ns, r.value, r.quality)
           for part in bus._log("rd") for m in part for r in decode_batch(m.value).readings}
    assert got == set(stream.readings)  # nothing lost (the half-landed part is a harmless repeat)


async def test_dlq_stats_and_replay_after_a_fix() -> None:
    bus = MemoryBus()
    await bus.create_topics([TopicSpec("raw", 2), TopicSpec("rd", 2), TopicSpec("dlq", 1)])
    stream = fault_stream(air_devices=4, env_devices=4, rounds=1)
    p = bus.producer()
    await p.start()
    await p.send_batch("raw", stream.records)
    directory = StaticDirectory({d: k for d, k in stream.devices.items() if d != "air-0003"})
    norm = Normaliser(bus, raw_topic="raw", readings_topic="rd", dlq_topic="dlq", group="g",
                      directory=directory)
    task = asyncio.create_task(norm.run())
    for _ in range(300):
        if norm.stage.records_committed >= len(stream.records):
            break
        await asyncio.sleep(0.01)
    found = await scan(bus, "dlq", idle_ms=50)
    n_air3 = sum(1 for key, _ in stream.records if key == b"air-0003")
    assert stats(found.letters)[("normalise", "unknown_device")] == 1 + n_air3  # + air-9999
    # the fix: register air-0003, then replay the unknown_device letters
    directory._kinds["air-0003"] = "air"
    norm.normalise._routes.clear()
    before_rd, before_dlq = (sum(len(p) for p in bus._log(t)) for t in ("rd", "dlq"))
    result = await replay(bus, dlq_topic="dlq", raw_topic="raw", reasons={"unknown_device"}, idle_ms=50)
    assert result.replayed == 1 + n_air3
    for _ in range(300):
        if norm.stage.records_committed >= len(stream.records) + result.replayed:
            break
        await asyncio.sleep(0.01)
    norm.request_stop()
    await task
    new = [m for part in bus._log("rd") for m in part][before_rd:]
    assert [decode_batch(m.value).device_id for m in new] == ["air-0003"]
    again = [decode_dead_letter(m.value) for m in bus._log("dlq")[0][before_dlq:]]
    assert sorted(d.reason_code for d in again) == ["malformed", "oversize", "unknown_device"]
