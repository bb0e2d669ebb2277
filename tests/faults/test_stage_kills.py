"""Each stage SIGKILLed mid-stream and started again: every acknowledged uplink stored exactly once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from tests.faults.harness import Accounting, Pipeline, Scenario, StageProcess, assert_exact

pytestmark = [pytest.mark.services, pytest.mark.slow, pytest.mark.faults]


def _kill_and_restart(pick: Callable[[Pipeline], StageProcess]) -> Callable[[Pipeline], object]:
    async def fault(pipeline: Pipeline) -> None:
        stage = pick(pipeline)
        stage.kill()
        await asyncio.sleep(2)
        stage.start()

    return fault


STAGES: dict[str, Callable[[Pipeline], StageProcess]] = {
    "bridge": lambda p: p.bridges[0],
    "normaliser": lambda p: p.normaliser,
    "writer": lambda p: p.writer,
}


@pytest.mark.parametrize("stage", list(STAGES))
async def test_stage_sigkilled_mid_stream_and_restarted_loses_and_doubles_nothing(
    stage: str, make_scenario: Callable[..., Scenario], record_accounting: Callable[[Accounting], None],
) -> None:
    scenario = make_scenario(f"SIGKILL {stage}")
    row = await scenario.run(_kill_and_restart(STAGES[stage]))  # type: ignore[arg-type]
    record_accounting(row)
    assert_exact(row, scenario)
