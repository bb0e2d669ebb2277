"""Device models: charger state machine, NB-IoT batches, bridges, determinism."""

from __future__ import annotations

import random

import pytest

from citysense.records import RecordBatch
from ingest.codecs import codec_named
from ingest.profiles import PROFILES
from simulators.cat1 import BridgeEvent, Cat1Device
from simulators.charger import TRANSITIONS, ChargerDevice, IllegalTransition
from simulators.load import build_streams, round_robin, time_ordered
from simulators.model import EXPONENTIAL, NORMAL, draws
from simulators.nbiot import NbiotDevice, ce_level
from simulators.scenario import ScaleScenario, load_scenario
from simulators.scenario_registry import DeviceSpec, scale_devices

T0 = 1_735_689_600 * 10**9  # 2025-01-01T00:00Z
NS = 10**9


def test_charger_never_makes_an_illegal_transition() -> None:
    rng = random.Random(11)
    seen: set[tuple[str, str]] = set()
    for i in range(40):
        pile = ChargerDevice(f"chg-{i}", rng, start_ns=T0, power_kw=7.0 if i % 2 else 120.0, dc=i % 2 == 0)
        state, last_t = "Available", 0
        for _ in range(3000):
            u = pile.take()
            assert u.time_ns >= last_t  # a pile's uplinks are in time order
            last_t = u.time_ns
            decoded = codec_named("charger-ocpp").decode(u.device_id, u.payload, 0)
            assert decoded == u.batch
            for status in u.batch.statuses:
                assert status.state in TRANSITIONS[state], (state, status.state)
                seen.add((state, status.state))
                state = status.state
    # The simulation exercises sessions, suspensions, faults and reservations.
    for pair in [("Available", "Preparing"), ("Preparing", "Charging"), ("Charging", "SuspendedEVSE"),
                 ("Charging", "Finishing"), ("Finishing", "Available"), ("Available", "Faulted"),
                 ("Available", "Reserved")]:
        assert pair in seen, pair


def test_charger_refuses_an_illegal_transition() -> None:
    pile = ChargerDevice("chg-x", random.Random(1), start_ns=T0)
    pile.state = "Finishing"
    with pytest.raises(IllegalTransition):
        pile._status(T0, "Charging")


def test_charger_meter_values_are_plausible() -> None:
    pile = ChargerDevice("chg-m", random.Random(5), start_ns=T0, power_kw=60.0, dc=True)
    energy = None
    for _ in range(5000):
        u = pile.take()
        values = {r.metric: r.value for r in u.batch.readings}
        if values:
            assert 0 <= values["power_kw"] <= 60.0
            assert 0 <= values["soc_pct"] <= 100
            assert energy is None or values["energy_kwh"] >= energy  # the register never runs back
            energy = values["energy_kwh"]
    assert energy is not None


@pytest.mark.parametrize("kind", ["env", "rain", "meter"])
def test_nbiot_batches_are_time_ordered_with_correct_timestamps(kind: str) -> None:
    profile = PROFILES[kind]
    device = NbiotDevice(f"{kind}-1", profile, random.Random(3), start_ns=T0 + 123_456_789)
    codec = codec_named(profile.codec)
    samples = int(profile.report_interval_s // profile.sample_interval_s)
    last_wake, last_seq = 0, -1
    for _ in range(50):
        u = device.take()
        batch = codec.decode(u.device_id, u.payload, 0)
        assert isinstance(batch, RecordBatch) and batch == u.batch
        times = [r.time_ns for r in batch.readings]
        assert times == sorted(times)
        expected = [u.time_ns - (samples - 1 - k) * int(profile.sample_interval_s) * NS
                    for k in range(samples)]
        assert sorted(set(times)) == expected
        assert len(batch.readings) == samples * len(profile.metrics)
        assert u.time_ns % NS == 0 and u.time_ns - last_wake >= profile.report_interval_s * NS
        (health,) = batch.health
        assert health.time_ns == u.time_ns
        assert health.ce_level == ce_level(health.rsrp_dbm or 0.0)
        assert -140 <= (health.rsrp_dbm or 0) <= -44
        assert {r.seq for r in batch.readings} == {last_seq + 1}
        last_wake, last_seq = u.time_ns, last_seq + 1


def test_nbiot_battery_drains_faster_at_higher_ce_level() -> None:
    drained: dict[int, list[float]] = {0: [], 2: []}
    for i in range(400):
        d = NbiotDevice(f"env-{i}", PROFILES["env"], random.Random(i), start_ns=T0)
        start = d.battery_v
        levels = [d.take().batch.health[0] for _ in range(100)]
        ces = {h.ce_level for h in levels}
        if ces in ({0}, {2}):
            drained[ces.pop() or 0].append(start - (levels[-1].battery_v or 0))
    assert drained[0] and drained[2]
    assert min(drained[2]) > max(drained[0])


def test_meter_registers_only_grow() -> None:
    d = NbiotDevice("mtr-1", PROFILES["meter"], random.Random(2), start_ns=T0)
    last: dict[str, float] = {}
    for _ in range(30):
        for r in d.take().batch.readings:
            assert r.value >= last.get(r.metric, 0.0)
            last[r.metric] = r.value


def test_bridge_events_show_in_the_data() -> None:
    crack = BridgeEvent("crack_growth", T0 + 3600 * NS, T0 + 7200 * NS, 0.5)
    vib = BridgeEvent("vibration", T0 + 3600 * NS, T0 + 7200 * NS, 8.0)

    def mean_after(events: tuple[BridgeEvent, ...], metric: str) -> float:
        dev = Cat1Device("brg-1", PROFILES["bridge"], random.Random(9), start_ns=T0, events=events)
        values = [r.value for _ in range(180) for r in dev.take().batch.readings
                  if r.metric == metric and r.time_ns >= T0 + 7200 * NS]
        return sum(values) / len(values)

    assert mean_after((crack,), "crack_width_mm") > mean_after((), "crack_width_mm") + 0.4
    dev = Cat1Device("brg-2", PROFILES["bridge"], random.Random(9), start_ns=T0, events=(vib,))
    during = [r.value for _ in range(120) for r in dev.take().batch.readings
              if r.metric == "accel_rms" and T0 + 3600 * NS <= r.time_ns < T0 + 7200 * NS]
    quiet = Cat1Device("brg-2", PROFILES["bridge"], random.Random(9), start_ns=T0)
    before = [r.value for _ in range(120) for r in quiet.take().batch.readings
              if r.metric == "accel_rms" and T0 + 3600 * NS <= r.time_ns < T0 + 7200 * NS]
    assert sum(during) > 4 * sum(before)


def _payloads(seed: int) -> list[bytes]:
    sc = load_scenario("scale")
    assert isinstance(sc, ScaleScenario)
    streams = build_streams(scale_devices(sc, 500), seed=seed, start_ns=T0)
    it = round_robin(streams)
    return [next(it).payload for _ in range(2000)]


def test_same_seed_same_uplinks() -> None:
    assert _payloads(3) == _payloads(3)
    assert _payloads(3) != _payloads(4)


def test_time_ordered_merge_is_in_device_time() -> None:
    sc = load_scenario("scale")
    assert isinstance(sc, ScaleScenario)
    streams = build_streams(scale_devices(sc, 300), seed=1, start_ns=T0)
    it = time_ordered(streams)
    times = [next(it).time_ns for _ in range(3000)]
    assert times == sorted(times)


@pytest.mark.parametrize("kind", sorted(PROFILES))
def test_fast_payloads_are_the_codec_encoding_of_the_records(kind: str) -> None:
    """Models write payload bytes directly (templates, precompiled frames) and build their
    records lazily; the bytes must be exactly the codec's encoding of those records."""
    profile = PROFILES[kind]
    codec = codec_named(profile.codec)
    specs = [DeviceSpec(f"{kind}-{i}", kind) for i in range(20)]
    streams = build_streams(specs, seed=17, start_ns=T0 + 987_654_321)
    checked = 0
    for _ in range(40):
        for s in streams:
            u = s.take()
            decoded = codec.decode(u.device_id, u.payload, 0)
            assert isinstance(decoded, RecordBatch) and decoded == u.batch, (kind, u.payload)
            # Charger status/heartbeat records carry no uplink counter (OCPP's uniqueId) and
            # readings no transactionId, so for chargers only the decoding can be compared.
            if kind != "charger":
                assert codec.encode(u.batch) == u.payload
            for r in u.batch.readings:
                m = profile.metric(r.metric)
                assert m is not None and m.low <= r.value <= m.high, (r.metric, r.value)
            checked += 1
    assert checked == 800


def test_generic_values_are_plausible() -> None:
    """Env and air values centre on the profile's typical value (daily cycle and noise)."""
    for kind in ("env", "air"):
        profile = PROFILES[kind]
        streams = build_streams([DeviceSpec(f"{kind}-{i}", kind) for i in range(50)], seed=2,
                                start_ns=T0)
        values: dict[str, list[float]] = {}
        for _ in range(100):
            for s in streams:
                for r in s.take().batch.readings:
                    values.setdefault(r.metric, []).append(r.value)
        for m in profile.metrics:
            if m.name in ("temperature", "humidity"):
                continue
            xs = values[m.name]
            mean = sum(xs) / len(xs)
            sd = (sum((x - mean) ** 2 for x in xs) / len(xs)) ** 0.5
            assert abs(mean - m.typical) < 0.1 * m.typical, (kind, m.name, mean)
            assert 0.05 * m.typical < sd < 0.4 * m.typical, (kind, m.name, sd)


def test_random_tables_are_standard() -> None:
    assert len(NORMAL) == len(EXPONENTIAL) == 65536
    mean = sum(NORMAL) / 65536
    var = sum(z * z for z in NORMAL) / 65536
    assert abs(mean) < 1e-9 and abs(var - 1) < 1e-3 and max(NORMAL) == -min(NORMAL) < 4.33
    assert abs(sum(EXPONENTIAL) / 65536 - 1) < 1e-3
    d = draws(random.Random(1), 20_000)
    assert len(d) == 20_000 and 0 <= min(d) < 50 and 65_485 < max(d) <= 65_535
    assert d == draws(random.Random(1), 20_000)
    # the batch draw is exactly randbytes, so it is as reproducible as the Mersenne Twister
    assert draws(random.Random(5), 3) == tuple(
        int.from_bytes(random.Random(5).randbytes(6)[i:i + 2], "little") for i in (0, 2, 4))


def test_lazy_records_are_those_of_the_time_of_the_uplink() -> None:
    """A batch built late (after the device moved on) is still that uplink's records."""
    d = NbiotDevice("mtr-9", PROFILES["meter"], random.Random(4), start_ns=T0)
    ups = [d.take() for _ in range(5)]
    eager = NbiotDevice("mtr-9", PROFILES["meter"], random.Random(4), start_ns=T0)
    for u in ups[::-1]:
        assert u.batch.readings[0].seq == ups.index(u)
    assert [u.batch for u in ups] == [eager.take().batch for _ in range(5)]
