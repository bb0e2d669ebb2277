"""Every metric the deployment's alert rules and dashboards name is one the code exports.

A renamed metric would otherwise leave a dashboard panel empty and an alert rule silent.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from alerts.metrics import AlertMetrics
from api.metrics import ApiMetrics
from citysense.metrics import Metrics
from ingest.broker_stats import BrokerStats

ROOT = Path(__file__).resolve().parents[2]
SUFFIXES = ("", "_total", "_bucket", "_count", "_sum", "_created")
FILES = sorted(
    p for p in [*ROOT.glob("deploy/**/*.yml"), *ROOT.glob("deploy/**/*.yaml"), *ROOT.glob("deploy/**/*.json")]
    if "citysense_" in p.read_text()
)


def exported() -> set[str]:
    registry = CollectorRegistry()
    Metrics(registry)
    AlertMetrics(registry)
    ApiMetrics(registry)
    stats = BrokerStats()
    for topic in ("$SYS/broker/publish/messages/dropped", "$SYS/broker/heap/current",
                  "$SYS/broker/store/messages/bytes"):
        stats.update(topic, b"1")
    registry.register(stats)
    names = set()
    for family in registry.collect():
        names.update(family.name + suffix for suffix in SUFFIXES)
        names.update(sample.name for sample in family.samples)
    return names


def test_the_deployment_names_metrics() -> None:
    assert any(p.name == "alerts.yml" for p in FILES), FILES


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_metric_named_in_the_deployment_is_exported(path: Path) -> None:
    names = exported()
    used = set(re.findall(r"\bcitysense_[a-z0-9_]+", path.read_text()))
    # Label values and job names share the prefix; only names that look like metrics count.
    used = {u for u in used if not u.startswith(("citysense_bridge-", "citysense_api-"))}
    missing = sorted(u for u in used if u not in names)
    assert not missing, f"{path.name} names metrics nothing exports: {missing}"
