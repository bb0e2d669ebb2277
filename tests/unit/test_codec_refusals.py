"""Input that decodes but could not be stored, or would not fit Kafka, is refused by the codec.

Each of these once passed the normaliser and then crashed the writer (or the
normaliser's produce) on every restart: a poison pill for its partition.
"""

from __future__ import annotations

import msgspec

from citysense.records import Reading, RecordBatch
from ingest.codecs import codec_named
from ingest.codecs.base import MALFORMED, OVERSIZE, DecodeError

NOW = 1_763_700_000 * 10**9


def _status(**fields: object) -> bytes:
    body = {"connectorId": 1, "status": "Charging", "errorCode": "NoError",
            "timestamp": "2025-11-21T04:00:00.000Z", **fields}
    return msgspec.json.encode([2, "7", "StatusNotification", body])


def _reason(out: RecordBatch | DecodeError) -> str:
    return out.reason_code if isinstance(out, DecodeError) else "accepted"


def test_charger_text_with_a_nul_or_too_long_is_refused() -> None:
    codec = codec_named("charger-ocpp")
    assert _reason(codec.decode("c", _status(transactionId="S-1", info="start:Remote"), NOW)) == "accepted"
    assert _reason(codec.decode("c", _status(transactionId="S\u00001"), NOW)) == MALFORMED
    assert _reason(codec.decode("c", _status(info="stop:\u0000"), NOW)) == MALFORMED
    assert _reason(codec.decode("c", _status(info="x" * 51), NOW)) == MALFORMED


def test_charger_connector_and_unique_id_must_fit_their_columns() -> None:
    codec = codec_named("charger-ocpp")
    assert _reason(codec.decode("c", _status(connectorId=2**31), NOW)) == MALFORMED
    assert _reason(codec.decode("c", _status(connectorId=-1), NOW)) == MALFORMED
    # uniqueId is any string of at most 36 characters (OCPP-J); only a u32 decimal becomes seq
    call = msgspec.json.encode([2, str(2**63), "Heartbeat", {}])
    assert _reason(codec.decode("c", call, NOW)) == "accepted"
    call = msgspec.json.encode([2, "x" * 37, "Heartbeat", {}])
    assert _reason(codec.decode("c", call, NOW)) == MALFORMED


def test_cat1_seq_must_be_a_u32_counter() -> None:
    codec = codec_named("cat1-json")
    ok = b'{"ts": 1763700000000, "seq": 4294967295, "m": {"pm25": 1.0}}'
    assert _reason(codec.decode("a", ok, NOW)) == "accepted"
    for seq in (2**32, 2**63, -2):
        payload = b'{"ts": 1763700000000, "seq": %d, "m": {"pm25": 1.0}}' % seq
        assert _reason(codec.decode("a", payload, NOW)) == MALFORMED, seq


def test_nbiot_frame_with_a_metric_twice_at_one_time_is_refused() -> None:
    codec = codec_named("nbiot-frame")
    once = RecordBatch("e", 0, (Reading("e", "pm25", NOW, 12.0, 0, 3),))
    twice = RecordBatch(
        "e", 0, (Reading("e", "pm25", NOW, 12.0, 0, 3), Reading("e", "pm25", NOW, 13.0, 0, 3)))
    assert _reason(codec.decode("e", codec.encode(once), NOW)) == "accepted"
    out = codec.decode("e", codec.encode(twice), NOW)
    assert isinstance(out, DecodeError) and out.reason_code == MALFORMED and "twice" in out.message


def test_an_uplink_may_not_expand_into_thousands_of_records() -> None:
    codec = codec_named("cat1-json")
    metrics = ", ".join(f'"m{i}": 1.0' for i in range(5000))
    payload = b'{"ts": 1763700000000, "seq": 1, "m": {%s}}' % metrics.encode()
    assert _reason(codec.decode("a", payload, NOW)) == OVERSIZE
