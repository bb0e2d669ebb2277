"""The fault suite: each scenario records one accounting row; the session prints them as a table.

The rows also go to ``$CITYSENSE_STATE_DIR/fault-accounting.json`` (the closing note's table).
Scenarios restart the local services, so they run one at a time (``make test`` runs no workers).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from brokers.kafka import KafkaBus
from citysense.settings import CommonSettings
from tests.conftest import ROOT, ServiceEnv
from tests.faults.harness import Accounting, Scenario
from tests.integration.pipeline import create_topics

_ROWS: list[Accounting] = []
_COLUMNS = ("scenario", "published", "acknowledged", "stored", "lost", "duplicates", "dead_lettered",
            "recovery_s", "note")


@pytest.fixture
def record_accounting() -> Callable[[Accounting], None]:
    def record(row: Accounting) -> None:
        _ROWS.append(row)
        print("\n" + _table([row]))

    return record


@pytest.fixture
def logs_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "logs"
    path.mkdir()
    yield path


@pytest.fixture
async def make_scenario(
    service_env: ServiceEnv, pipeline_settings: CommonSettings, kafka_bus: KafkaBus, database: str,
    unique: str, logs_dir: Path,
) -> Callable[..., Scenario]:
    """Scenarios on fresh topics and a fresh database."""
    await create_topics(kafka_bus, pipeline_settings)

    def make(name: str, **options: Any) -> Scenario:
        settings = options.pop("settings", pipeline_settings)
        return Scenario(name, service_env, settings, database, unique, logs_dir, **options)

    return make


def _table(rows: list[Accounting]) -> str:
    cells = [list(_COLUMNS), *[[str(r.as_row()[c]) for c in _COLUMNS] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(_COLUMNS))]
    left = (0, len(_COLUMNS) - 1)  # scenario and note
    lines = [" | ".join(v.ljust(w) if i in left else v.rjust(w)
                        for i, (v, w) in enumerate(zip(row, widths, strict=True)))
             for row in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _ROWS:
        return
    terminalreporter.section("fault suite accounting")
    terminalreporter.write_line(_table(_ROWS))
    state = Path(os.environ.get("CITYSENSE_STATE_DIR", ROOT / ".state"))
    out = state / "fault-accounting.json"
    try:
        out.write_text(json.dumps([r.as_row() for r in _ROWS], indent=2) + "\n")
        terminalreporter.write_line(f"(written to {out})")
    except OSError as exc:
        terminalreporter.write_line(f"(could not write {out}: {exc})")
