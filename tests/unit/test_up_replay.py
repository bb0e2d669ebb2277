"""Where ``citysense up`` starts a new replay: a bridge alert comes within its first minutes of
device time, at any time of day (so the first incident depends little on how fast this machine
replays). Checked on the simulated bridges against the default pack's deflection rule."""

from __future__ import annotations

import pytest

from alerts.cli import DEFAULT_RULES
from alerts.rule_file import load
from citysense.launch.up_devices import REPLAY_S, county, new_scenario_start, scenario_events
from simulators.load import build_streams, time_ordered
from simulators.model import NS
from simulators.scenario_registry import city_registry

DAY_NS = 86_400 * NS
MIDNIGHT_CST = 1_767_196_800 * NS - 8 * 3600 * NS  # 2026-01-01 00:00 China Standard Time


def first_deflection_alert_ns(now_ns: int) -> int | None:
    """Device time at which the default ``bridge-deflection`` rule first holds on any bridge."""
    sc = county()
    rule = next(r for r in load(DEFAULT_RULES).rules if r.id == "bridge-deflection")
    threshold = min(rule.grades.values())
    start, position = new_scenario_start(sc, now_ns), now_ns - REPLAY_S * NS
    bridges = [d for d in city_registry(sc).devices if d.kind == "bridge"]
    streams = build_streams(bridges, seed=sc.seed, start_ns=position, events=scenario_events(sc, start))
    above_since: dict[str, int] = {}
    for u in time_ordered(streams):
        if u.time_ns > now_ns:
            return None
        for r in u.batch.readings:
            if r.metric != "deflection_mm":
                continue
            if r.value <= threshold:
                above_since.pop(r.device_id, None)
                continue
            since = above_since.setdefault(r.device_id, r.time_ns)
            if r.time_ns - since >= rule.for_ * NS:
                return r.time_ns
    return None


@pytest.mark.parametrize("local_hour", [3, 9, 15, 21])
def test_a_new_replay_raises_a_bridge_alert_in_its_first_minutes(local_hour: int) -> None:
    now = MIDNIGHT_CST + 40 * DAY_NS + local_hour * 3600 * NS
    fired = first_deflection_alert_ns(now)
    assert fired is not None
    # 4 minutes of device time: a few hundred of the replay's ~20,000 uplinks (was 62 minutes).
    assert fired - (now - REPLAY_S * NS) <= 4 * 60 * NS
