"""Issue 12, finding 6: readings older than the retention window are refused, not stored then dropped."""

from __future__ import annotations

from datetime import timedelta

from brokers.base import Message
from citysense.records import QUALITY_LATE, Envelope, Health, Reading, RecordBatch, encode
from ingest.codecs import codec_named
from ingest.dedupe import Deduper
from ingest.normaliser import Normalise, NormaliseConfig, Outcome
from ingest.settings import NormaliserSettings
from ingest.topics import uplink_topic
from storage.settings import StorageSettings

NS = 1_000_000_000
DAY = 86_400 * NS
NOW = 1_790_000_000 * NS


def _normalise(kind: str, device: str, payload: bytes, config: NormaliseConfig | None = None) -> Outcome:
    env = Envelope(uplink_topic(kind, device), device, NOW, payload)
    return Normalise(config)(Message("raw", 0, 1, device.encode(), encode(env), 0), Deduper(100))


def _air(days_old: float) -> bytes:
    t = NOW - int(days_old * DAY)
    batch = RecordBatch("air-1", 0, (Reading("air-1", "pm25", t, 12.0, 0, 3),))
    return codec_named("cat1-json").encode(batch)


def test_a_reading_older_than_retention_is_dead_lettered_not_stored() -> None:
    out = _normalise("air", "air-1", _air(91))
    assert out.batch is None and out.dead is not None
    assert out.dead.reason_code == "beyond_retention"
    assert "older than retention" in out.dead.message


def test_a_reading_inside_retention_is_kept_and_flagged_late() -> None:
    out = _normalise("air", "air-1", _air(89))
    assert out.dead is None and out.batch is not None
    assert out.batch.readings[0].quality & QUALITY_LATE
    assert out.late == 1


def test_a_backlog_straddling_the_edge_keeps_its_recent_part() -> None:
    old, recent = NOW - 90 * DAY - 7200 * NS, NOW - 90 * DAY + 3600 * NS  # a backlog 18 h at most
    readings = tuple(Reading("env-1", "pm25", t, 10.0, 0, 9) for t in (old, old + 300 * NS, recent))
    frame = codec_named("nbiot-frame").encode(RecordBatch("env-1", 0, readings, (), (Health("env-1", old),)))
    out = _normalise("env", "env-1", frame)
    assert out.batch is not None and [r.time_ns for r in out.batch.readings] == [recent]
    assert out.batch.health == ()
    assert out.dead is not None and out.dead.reason_code == "beyond_retention"
    assert "3 record(s) rejected, 1 kept" in out.dead.message
    assert out.late == 1  # only the kept reading counts as late


def test_the_window_follows_the_setting_and_zero_turns_it_off() -> None:
    week = NormaliseConfig(retention_ns=7 * DAY)
    assert _normalise("air", "air-1", _air(8), week).dead is not None
    assert _normalise("air", "air-1", _air(8), NormaliseConfig()).dead is None
    assert _normalise("air", "air-1", _air(400), NormaliseConfig(retention_ns=0)).batch is not None


def test_the_normaliser_default_is_the_storage_retention() -> None:
    n = NormaliserSettings.model_construct()
    assert n.normalise_retention == StorageSettings.model_construct().retention == timedelta(days=90)
    assert NormaliseConfig.from_settings(NormaliserSettings(normalise_retention=timedelta(days=30))
                                         ).retention_ns == 30 * DAY
