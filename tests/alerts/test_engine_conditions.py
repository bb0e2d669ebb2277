"""Each condition kind fires, escalates, de-escalates and resolves at the exact reading,
through the engine on the real Kafka and PostgreSQL (device time injected)."""

from __future__ import annotations

import pytest

from brokers.kafka import KafkaBus
from citysense.records import Health, Reading, RecordBatch, Status
from citysense.settings import CommonSettings
from tests.alerts.harness import MIN, T0, Harness, alert_settings, scalar, setup, transitions

pytestmark = pytest.mark.services

RULES = """
rules:
  - id: crack
    name: crack width
    selector: {kind: [bridge]}
    condition: {type: threshold, metric: crack_width_mm}
    grades: {yellow: 0.3, orange: 0.5, red: 1.0}
    clear: 0.25
    for: 2m
  - id: growth
    name: crack growth
    selector: {kind: [bridge]}
    condition: {type: rate, metric: deflection_mm, window: 10m, per: 1m}
    grades: {yellow: 1, red: 5}
    clear: 0.5
  - id: vibration
    name: vibration rms
    selector: {kind: [bridge]}
    condition: {type: aggregate, metric: accel_rms, fn: rms, window: 3m}
    grades: {blue: 1, orange: 2}
    clear: 0.8
  - id: faulted
    name: connector faulted
    selector: {kind: [charger]}
    condition: {type: state_duration, states: [Faulted, Unavailable]}
    grades: {yellow: 120, red: 600}
  - id: battery
    name: low battery
    selector: {kind: [env]}
    condition: {type: health, field: battery_v, direction: below}
    grades: {blue: 3.4, red: 3.0}
    clear: 3.45
"""


def bridge(i: int, **values: float) -> RecordBatch:
    t = T0 + i * MIN
    return RecordBatch("bridge-0001", t, tuple(Reading("bridge-0001", m, t, v, t) for m, v in values.items()))


async def test_every_condition_kind_at_the_exact_reading(
        pipeline_settings: CommonSettings, kafka_bus: KafkaBus, database: str) -> None:
    s = alert_settings(pipeline_settings, database)
    await setup(kafka_bus, s, RULES)
    async with Harness(kafka_bus, s) as h:
        crack = [0.2, 0.31, 0.32, 0.33, 0.6, 0.46, 0.44, 0.26, 0.24, 0.9]
        await h.send([bridge(i, crack_width_mm=v) for i, v in enumerate(crack)])
        deflection = [0.0, 0.5, 2.0, 4.0, 10.0] + [40.0] * 12
        await h.send([bridge(20 + i, deflection_mm=v) for i, v in enumerate(deflection)])
        rms = [0.5, 1.5, 3.0, 3.0, 0.5, 0.5, 0.5, 0.5]
        await h.send([bridge(40 + i, accel_rms=v) for i, v in enumerate(rms)])
        await h.send([RecordBatch("charger-0001", T0, statuses=(Status("charger-0001", 1, T0, "Faulted"),))])
        await h.send([RecordBatch("charger-0001", T0 + k * MIN, health=(Health("charger-0001", T0 + k * MIN),
                                                                          ),) for k in (1, 2, 3, 10, 11)])
        back = T0 + 12 * MIN
        available = Status("charger-0001", 1, back, "Available")
        await h.send([RecordBatch("charger-0001", back, statuses=(available,))])
        volts = [3.6, 3.39, 2.9, 3.2, 3.44, 3.5]
        await h.send([RecordBatch("env-0001", T0 + i * MIN,
                                  health=(Health("env-0001", T0 + i * MIN, battery_v=v),))
                      for i, v in enumerate(volts)])
    got = [(r, a, g, (t - T0) // MIN) for r, _, a, g, _, t in await transitions(database)]
    by_rule = {rule: [x[1:] for x in got if x[0] == rule] for rule in ("crack", "growth", "vibration",
                                                                        "faulted", "battery")}
    # threshold with for: 2m - pending at 1, fired at 3 (2 min later), escalates at 4,
    # holds orange at 0.46 (hysteresis band 0.05 below 0.5), yellow at 0.44, resolves at 0.24
    assert by_rule["crack"] == [("pending", 3, 1), ("fired", 3, 3), ("escalated", 2, 4),
                                ("deescalated", 3, 6), ("resolved", 3, 8), ("pending", 2, 9)]
    # rate per minute over 10 minutes (oldest to newest point in the window)
    assert by_rule["growth"][0] == ("fired", 3, 23)
    assert ("escalated", 1, 25) in by_rule["growth"] and by_rule["growth"][-1][0] == "resolved"
    # RMS over 3 minutes (points at both ends count): 2.26 at 43, 1.56 at 46 (< 2 - 0.2 band)
    assert by_rule["vibration"] == [("fired", 4, 41), ("escalated", 2, 43), ("deescalated", 4, 46),
                                    ("resolved", 4, 47)]
    assert by_rule["faulted"] == [("fired", 3, 3), ("escalated", 1, 11), ("resolved", 1, 12)]
    assert by_rule["battery"] == [("fired", 4, 1), ("escalated", 1, 2), ("deescalated", 4, 3),
                                  ("resolved", 4, 5)]
    assert await scalar(database, "SELECT count(*) FROM alerts WHERE state <> 'resolved'") == 1
    published = await scalar(database, "SELECT count(*) FROM alert_transitions WHERE published_at IS NULL")
    assert published == 0


async def test_the_default_rule_pack_runs_on_the_seeds_kinds(
        pipeline_settings: CommonSettings, kafka_bus: KafkaBus, database: str) -> None:
    from alerts.cli import DEFAULT_RULES

    s = alert_settings(pipeline_settings, database)
    await setup(kafka_bus, s, DEFAULT_RULES.read_text())
    async with Harness(kafka_bus, s) as h:
        await h.send([bridge(i, crack_width_mm=0.35, tilt_deg=0.01, deflection_mm=5.0) for i in range(4)])
        rain = [RecordBatch("rain-0001", T0 + i * 5 * MIN, (Reading("rain-0001", "rain_mm", T0 + i * 5 * MIN,
                                                                    20.0, T0 + i * 5 * MIN),))
                for i in range(4)]
        await h.send(rain)
        await h.send([RecordBatch("env-0001", T0, health=(Health("env-0001", T0, -110.0, 1.0, 1, 3.25),))])
    got = {(r, d, a, g) for r, d, a, g, _, _ in await transitions(database)}
    assert ("bridge-crack-width", "bridge-0001", "fired", 3) in got  # 0.35 mm for 2 min: yellow III
    assert ("rain-3h", "rain-0001", "fired", 2) in got  # 60 mm in 3 h: orange rainstorm signal
    assert ("rain-6h", "rain-0001", "fired", 3) in got
    assert ("device-low-battery", "env-0001", "fired", 3) in got  # 3.25 V: yellow


TIMED = """
rules:
  - id: faulted
    name: connector faulted
    selector: {kind: [charger]}
    condition: {type: state_duration, states: [Faulted, Unavailable]}
    grades: {yellow: 120, red: 600}
    for: 30s
"""


async def test_a_charger_fault_escalates_on_its_own_deadline(
        pipeline_settings: CommonSettings, kafka_bus: KafkaBus, database: str) -> None:
    """The charger says Faulted once and then nothing: the alert still goes pending, fires and
    escalates at its moments (injected clock), not at an uplink that never comes."""
    s = alert_settings(pipeline_settings, database)
    await setup(kafka_bus, s, TIMED)
    async with Harness(kafka_bus, s) as h:
        await h.send([RecordBatch("charger-0001", T0, statuses=(Status("charger-0001", 1, T0, "Faulted"),))])
        sec = MIN // 60
        for t in (119, 121, 150, 151, 599, 601):
            await h.advance(T0 + t * sec)
        got = [(a, g, round(v or 0), (t - T0) // sec) for _, _, a, g, v, t in await transitions(database)]
        assert got == [("pending", 3, 121, 121), ("fired", 3, 151, 151), ("escalated", 1, 601, 601)]
        back = T0 + 11 * MIN
        available = Status("charger-0001", 1, back, "Available")
        await h.send([RecordBatch("charger-0001", back, statuses=(available,))])
        h.clock.now_ns = back
        await h.advance(T0 + 60 * MIN)
        assert [a for _, _, a, *_ in await transitions(database)][-1] == "resolved"
    assert await scalar(database, "SELECT count(*) FROM alerts WHERE state <> 'resolved'") == 0
