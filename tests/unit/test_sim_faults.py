"""Fault injection: each fault kind at its ratio, and what the codecs make of it."""

from __future__ import annotations

import math
from collections import Counter

from citysense.records import RecordBatch
from ingest.codecs import codec_named
from ingest.codecs.base import OVERSIZE, TRUNCATED, DecodeError
from ingest.profiles import PROFILES
from ingest.topics import parse_uplink_topic
from simulators.faults import FAULTS, FaultInjector, inject
from simulators.load import build_streams, round_robin
from simulators.scenario import ScaleScenario, load_scenario
from simulators.scenario_registry import scale_devices

T0 = 1_735_689_600 * 10**9
RATIOS = {"duplicate": 0.02, "out_of_order": 0.02, "clock_skew": 0.01, "malformed": 0.01,
          "truncated": 0.01, "unknown_device": 0.005, "oversize": 0.002, "reconnect_burst": 0.003}
DRAWS = 40_000


def _stream(n: int, seed: int = 5):  # type: ignore[no-untyped-def]
    sc = load_scenario("scale")
    assert isinstance(sc, ScaleScenario)
    it = round_robin(build_streams(scale_devices(sc, 400), seed=seed, start_ns=T0))
    return [next(it) for _ in range(n)]


def test_each_fault_appears_at_its_ratio() -> None:
    """Tolerance: within 4 binomial standard deviations of ratio x draws (seeded, so stable)."""
    injector = FaultInjector(RATIOS, seed=1)
    out = list(inject(_stream(DRAWS), injector))
    tagged = Counter(u.fault for u in out if u.fault)
    assert injector.draws <= DRAWS
    for fault in FAULTS:
        p = RATIOS[fault]
        expected = p * injector.draws
        sigma = math.sqrt(injector.draws * p * (1 - p))
        assert abs(injector.counts[fault] - expected) <= 4 * sigma, (fault, injector.counts[fault])
    # The stream shows them: one tagged copy per duplicate etc.; bursts carry 2..6 uplinks.
    for fault in ("duplicate", "out_of_order", "clock_skew", "malformed", "truncated",
                  "unknown_device", "oversize"):
        assert tagged[fault] == injector.counts[fault]
    assert sum(u.reconnect for u in out) == injector.counts["reconnect_burst"]
    assert 2 * injector.counts["reconnect_burst"] <= tagged["reconnect_burst"]
    assert tagged["reconnect_burst"] <= 6 * injector.counts["reconnect_burst"]
    # Nothing is lost or invented: every clean uplink is sent once, plus one copy per duplicate.
    assert len(out) == DRAWS + injector.counts["duplicate"]
    # Uplinks a device makes while offline are buffered, not drawn.
    assert injector.draws + tagged["reconnect_burst"] - injector.counts["reconnect_burst"] == DRAWS


def test_faulted_payloads_fail_to_decode_with_a_reason() -> None:
    injector = FaultInjector({"malformed": 0.2, "truncated": 0.2, "oversize": 0.1}, seed=2)
    checked: Counter[str] = Counter()
    for u in inject(_stream(3000), injector):
        if u.fault not in ("malformed", "truncated", "oversize"):
            continue
        parsed = parse_uplink_topic(u.topic)
        assert parsed is not None
        out = codec_named(PROFILES[parsed[0]].codec).decode(u.device_id, u.payload, 0)
        assert isinstance(out, DecodeError), (u.fault, u.topic)
        if u.fault == "oversize":
            assert out.reason_code == OVERSIZE
        if u.fault == "truncated" and PROFILES[parsed[0]].codec == "nbiot-frame":
            assert out.reason_code == TRUNCATED
        checked[u.fault] += 1
    assert min(checked.values()) > 50


def test_clock_skew_and_out_of_order_and_ghosts() -> None:
    clean = _stream(5000, seed=9)
    injector = FaultInjector({"clock_skew": 0.05, "out_of_order": 0.05, "unknown_device": 0.05}, seed=3)
    out = list(inject(clean, injector))
    by_payload = {u.payload: u for u in clean}
    for u in out:
        parsed = parse_uplink_topic(u.topic)
        assert parsed is not None
        if u.fault == "clock_skew":
            decoded = codec_named(PROFILES[parsed[0]].codec).decode(u.device_id, u.payload, 0)
            if not (u.batch.readings or u.batch.statuses):  # Heartbeat.req: no clock to skew
                assert u.payload in by_payload
                continue
            assert isinstance(decoded, RecordBatch) and decoded == u.batch
            assert u.payload not in by_payload
        elif u.fault == "unknown_device":
            assert u.device_id.startswith("ghost-") and parsed[1] == u.device_id
    positions = {id(u): i for i, u in enumerate(clean)}
    late = [u for u in out if u.fault == "out_of_order"]
    assert late and all(id(u) not in positions for u in late)  # re-tagged copies, sent later


def test_injection_is_deterministic() -> None:
    a = list(inject(_stream(3000), FaultInjector(RATIOS, seed=4)))
    b = list(inject(_stream(3000), FaultInjector(RATIOS, seed=4)))
    assert [(u.topic, u.payload, u.fault) for u in a] == [(u.topic, u.payload, u.fault) for u in b]


def test_inlined_clean_path_equals_apply_on_each_uplink() -> None:
    clean = _stream(6000, seed=6)
    reference = FaultInjector(RATIOS, seed=8)
    expected = [x for u in clean for x in reference.apply(u)] + reference.flush()
    injector = FaultInjector(RATIOS, seed=8)
    got = list(inject(clean, injector))
    assert [(u.device_id, u.topic, u.payload, u.fault, u.reconnect) for u in got] == \
        [(u.device_id, u.topic, u.payload, u.fault, u.reconnect) for u in expected]
    assert injector.counts == reference.counts and injector.draws == reference.draws
