"""The simulated piles and the default rule pack agree on what a healthy charger sends.

A pile heartbeats at its profile's interval (OCPP HeartbeatInterval) in every state, the registry
gives each pile that interval, and the default pack's ``charger-offline`` measures against it: no
healthy pile of the county is late, not even one whose heartbeat was lost or corrupted on the
way. (That a silent pile does alert is tests/alerts/test_engine_silence.py, on the engine.)
"""

from __future__ import annotations

import random

from alerts.cli import DEFAULT_RULES
from alerts.rule_file import load
from alerts.rules import Silence
from alerts.silence import late_after_ns
from citysense.launch.up_devices import county
from ingest.profiles import PROFILES
from simulators.charger import HEARTBEAT_S, ChargerDevice
from simulators.faults import FaultInjector
from simulators.load import build_streams, time_ordered
from simulators.model import NS
from simulators.scenario_registry import city_registry, registry_export

T0 = 1_750_000_000 * NS
# What the normaliser dead-letters: the pile's uplink never reaches the alert engine.
LOST = {"malformed", "truncated", "oversize", "unknown_device"}


def charger_offline() -> Silence:
    rule = next(r for r in load(DEFAULT_RULES).rules if r.id == "charger-offline")
    assert isinstance(rule.condition, Silence)
    return rule.condition


def test_the_pile_the_registry_and_the_profile_use_one_heartbeat_interval() -> None:
    assert HEARTBEAT_S == PROFILES["charger"].report_interval_s == 300
    chargers = [d for d in registry_export(city_registry(county()))["devices"] if d["kind"] == "charger"]
    assert len(chargers) == 1200 and {d["report_interval_s"] for d in chargers} == {HEARTBEAT_S}


def test_a_pile_is_never_silent_longer_than_its_heartbeat_interval_in_any_state() -> None:
    rng = random.Random(7)
    states: set[str] = set()
    longest = 0
    for i in range(60):
        pile = ChargerDevice(f"chg-{i:05d}", rng, start_ns=T0)
        last = None
        while pile.next_ns < T0 + 72 * 3600 * NS:
            u = pile.take()
            states.add(pile.state)
            if last is not None:
                longest = max(longest, u.time_ns - last)
            last = u.time_ns
    # Faults, maintenance, reservations and unplugging all last longer than the interval.
    assert {"Faulted", "Unavailable", "Reserved", "Finishing"} <= states
    assert longest <= HEARTBEAT_S * NS


def test_the_default_pack_finds_no_healthy_pile_of_the_county_late() -> None:
    sc = county()
    piles = [d for d in city_registry(sc).devices if d.kind == "charger"]
    late_ns = late_after_ns(charger_offline(), HEARTBEAT_S)
    injector = FaultInjector(sc.faults.as_dict(), sc.seed)  # as the county's devices send them
    last: dict[str, int] = {}
    longest: dict[str, int] = {}
    lost_in_a_row: dict[str, int] = {}
    # Silent for the platform, so they may alert: a simulated outage (reconnect_burst), or two
    # uplinks in a row dead-lettered (ten minutes with nothing usable from the pile).
    silent: set[str] = set()
    end = T0 + 3 * 3600 * NS
    for clean in time_ordered(build_streams(piles, seed=sc.seed, start_ns=T0)):
        if clean.time_ns > end:
            break
        for u in injector.apply(clean):
            pile = clean.device_id if u.fault == "unknown_device" else u.device_id
            if u.fault == "reconnect_burst":
                silent.add(pile)
            if u.fault in LOST:
                lost_in_a_row[pile] = lost_in_a_row.get(pile, 0) + 1
                if lost_in_a_row[pile] >= 2:
                    silent.add(pile)
                continue
            lost_in_a_row[pile] = 0
            if pile in last:
                longest[pile] = max(longest.get(pile, 0), u.time_ns - last[pile])
            last[pile] = max(last.get(pile, 0), u.time_ns)
    assert sum(injector.counts[f] for f in LOST) > 50  # the county's faults did hit heartbeats
    late = {d: gap / NS for d, gap in longest.items() if gap >= late_ns and d not in silent}
    assert late == {}
    assert len(longest) == len(piles) and len(silent) < 50
    # One heartbeat lost: silent for two intervals, which the rule tolerates.
    assert sum(gap >= 2 * HEARTBEAT_S * NS for d, gap in longest.items() if d not in silent) > 50
