"""A 3-broker KRaft cluster on loopback (replication factor 3, min.insync.replicas 2, acks=all,
idempotent producers): one broker SIGKILLed mid-stream and brought back; nothing lost or doubled.

The cluster comes from ``deploy/local/kafka-cluster.sh`` (ports from
``CITYSENSE_KAFKA_CLUSTER_PORT_BASE``, default 19120-19125), started for this module only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest

from brokers.kafka import KafkaBus, KafkaConfig
from citysense.settings import CommonSettings
from tests.faults.harness import Accounting, Pipeline, Scenario, assert_exact, service
from tests.integration.pipeline import create_topics

pytestmark = [pytest.mark.services, pytest.mark.slow, pytest.mark.faults]

KILLED_NODE = "2"


@pytest.fixture(scope="module")
def kafka_cluster() -> Iterator[str]:
    out = service("kafka-cluster", "up", timeout_s=300)
    bootstrap = out.strip().splitlines()[-1].split("(")[-1].rstrip(")")
    try:
        yield bootstrap
    finally:
        service("kafka-cluster", "down", timeout_s=180)


async def _kill_one_broker(pipeline: Pipeline) -> None:
    await asyncio.to_thread(service, "kafka-cluster", "kill", KILLED_NODE)
    await asyncio.sleep(10)  # two of three in sync: acks=all still succeeds (min.insync.replicas 2)
    await asyncio.to_thread(service, "kafka-cluster", "up", timeout_s=300)


async def test_one_broker_of_three_killed_and_back_loses_and_doubles_nothing(
    kafka_cluster: str, pipeline_settings: CommonSettings, make_scenario: Callable[..., Scenario],
    record_accounting: Callable[[Accounting], None],
) -> None:
    s = pipeline_settings.model_copy(update={"kafka_bootstrap": kafka_cluster, "kafka_replication_factor": 3})
    await create_topics(KafkaBus(KafkaConfig(bootstrap=kafka_cluster, replication_factor=3)), s)
    scenario = make_scenario("kafka cluster, 1 of 3 killed", settings=s,
                             stage_env={"CITYSENSE_KAFKA_REPLICATION_FACTOR": "3"})
    row = await scenario.run(_kill_one_broker)
    record_accounting(row)
    assert_exact(row, scenario)
