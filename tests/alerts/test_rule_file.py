"""Rule files: the default pack is valid; a bad file lists every problem with its line."""

from __future__ import annotations

import pytest

from alerts.cli import DEFAULT_RULES
from alerts.rule_file import RuleFileError, load, parse
from alerts.rules import Grade

BAD = """\
receivers:
  - {name: ops, url: "http://127.0.0.1:1/hook"}
rules:
  - id: no-such-metric
    name: X
    condition: {type: threshold, metric: crack_depth_mm}
    grades: {red: 1}
  - id: bad-window
    name: Y
    condition: {type: aggregate, metric: pm25, fn: mean, window: 5 fortnights}
    grades: {red: 1}
  - id: upside-down
    name: Z
    condition: {type: threshold, metric: pm25}
    grades:
      red: 1
      blue: 2
  - id: fine
    name: W
    selector: {kind: [bridge]}
    condition: {type: threshold, metric: tilt_deg}
    grades: {red: 1}
    receivers: [ops, pager]
  - id: fine
    name: duplicate
    condition: {type: silence}
"""


def test_default_pack_is_valid_and_graded() -> None:
    rule_file = load(DEFAULT_RULES)
    ids = {r.id for r in rule_file.rules}
    assert {"bridge-crack-width", "charger-faulted", "rain-3h", "pm25-aqi", "device-offline"} <= ids
    crack = next(r for r in rule_file.rules if r.id == "bridge-crack-width")
    assert crack.thresholds()[0] == (Grade.RED, 1.0)


def test_every_problem_has_its_line() -> None:
    with pytest.raises(RuleFileError) as caught:
        parse(BAD, "bad.yaml")
    found = [(p.line, p.where) for p in caught.value.problems]
    assert found == [
        (6, "rules[0] (no-such-metric).condition.metric"),
        (10, "rules[1] (bad-window).condition.window"),
        (15, "rules[2] (upside-down).grades"),
        (23, "rules[3] (fine).receivers"),
        (24, "rules[4] (fine).id"),
    ]
    assert "crack_depth_mm" in str(caught.value) and "pager" in str(caught.value)
