"""What the end-to-end benchmark reads from outside the stages.

- CPU seconds per process from ``/proc/<pid>/stat`` (PostgreSQL: the
  postmaster's own time, the time of the backends it has reaped (``cutime``),
  and the live backends' time, so every backend counts, even short-lived ones);
- Kafka high watermarks and consumer-group committed offsets;
- each stage's Prometheus ``/metrics``;
- Mosquitto's broker-wide dropped-PUBLISH counter from ``$SYS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import urllib.request
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]
from prometheus_client.parser import text_string_to_metric_families

from brokers.mqtt import MqttClient, MqttConfig

TICK = os.sysconf("SC_CLK_TCK")
SYS_DROPPED = "$SYS/broker/publish/messages/dropped"


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()  # fields from 3 (state) on


def cpu_seconds(pid: int, reaped_children: bool = False) -> float:
    """utime + stime (+ cutime + cstime) of a process; 0 if it is gone."""
    f = _stat(pid)
    if f is None:
        return 0.0
    ticks = int(f[11]) + int(f[12])
    if reaped_children:
        ticks += int(f[13]) + int(f[14])
    return ticks / TICK


def children(ppid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            f = _stat(int(entry.name))
            if f is not None and int(f[1]) == ppid:
                out.append(int(entry.name))
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def find_pid(*needles: str) -> int | None:
    """The lowest pid whose command line contains every needle (a daemon's first process)."""
    found = [int(e.name) for e in Path("/proc").iterdir()
             if e.name.isdigit() and all(n in cmdline(int(e.name)) for n in needles)]
    return min(found) if found else None


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (everyone's: the machine is shared)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(x) for x in fields[:8]]
    idle = values[3] + values[4]
    return (sum(values) - idle) / TICK


_PG_BACKGROUND = ("walwriter", "checkpointer", "background writer")


class CpuMeter:
    """CPU seconds per named process; PostgreSQL as the whole cluster and as our database's backends."""

    def __init__(self, stages: dict[str, int], mosquitto: int | None, kafka: int | None,
                 postmaster: int | None, database: str) -> None:
        self.stages, self.mosquitto, self.kafka = stages, mosquitto, kafka
        self.postmaster, self.database = postmaster, database

    def sample(self) -> dict[str, float]:
        out = {name: cpu_seconds(pid) for name, pid in self.stages.items()}
        out["mosquitto"] = cpu_seconds(self.mosquitto) if self.mosquitto else 0.0
        out["kafka"] = cpu_seconds(self.kafka) if self.kafka else 0.0
        pg = ours = background = 0.0
        if self.postmaster:
            pg = cpu_seconds(self.postmaster, reaped_children=True)
            for pid in children(self.postmaster):
                seconds = cpu_seconds(pid)
                pg += seconds
                line = cmdline(pid)
                if self.database in line:  # our backends and autovacuum workers in our database
                    ours += seconds
                elif any(w in line for w in _PG_BACKGROUND):
                    background += seconds
        out["postgres"] = pg  # the whole cluster: every database's work, ours and others'
        # live processes only: our writer's pool connections persist for the run
        out["postgres_our_db"] = ours
        out["postgres_background"] = background  # WAL writer, checkpointer, bgwriter: shared
        out["generator"] = cpu_seconds(os.getpid())
        out["machine_busy"] = machine_busy_seconds()
        return out


class KafkaOffsets:
    def __init__(self, bootstrap: str) -> None:
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        self._admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        self._tps: dict[str, list[TopicPartition]] = {}

    async def start(self) -> None:
        await self._consumer.start()
        await self._admin.start()

    async def stop(self) -> None:
        await self._consumer.stop()
        await self._admin.close()

    async def _partitions(self, topic: str) -> list[TopicPartition]:
        if topic not in self._tps:
            parts = self._consumer.partitions_for_topic(topic)
            while not parts:
                await self._consumer._client.force_metadata_update()
                parts = self._consumer.partitions_for_topic(topic)
            self._tps[topic] = [TopicPartition(topic, p) for p in sorted(parts)]
        return self._tps[topic]

    async def high(self, topic: str) -> int:
        """Records ever written to the topic (sum of its partitions' high watermarks)."""
        ends = await self._consumer.end_offsets(await self._partitions(topic))
        return int(sum(ends.values()))

    async def committed(self, group: str, topic: str) -> int:
        offsets = await self._admin.list_consumer_group_offsets(group)
        return int(sum(o.offset for tp, o in offsets.items() if tp.topic == topic and o.offset >= 0))


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = float(s.value)
    return out


def total(samples: Samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= lab)


def delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
    return total(after, name, **labels) - total(before, name, **labels)


def histogram_delta(after: Samples, before: Samples, name: str) -> list[tuple[float, float]]:
    """Cumulative (upper bound, count) pairs of a histogram's buckets between two scrapes."""
    counts: dict[float, float] = defaultdict(float)
    for samples, sign in ((after, 1), (before, -1)):
        for (n, lab), v in samples.items():
            if n == f"{name}_bucket":
                counts[float(dict(lab)["le"])] += sign * v
    return sorted(counts.items())


def quantile_upper(buckets: Iterable[tuple[float, float]], q: float) -> float | None:
    """The upper bound of the bucket holding quantile ``q`` (exact against bucket edges)."""
    pairs = list(buckets)
    if not pairs or pairs[-1][1] <= 0:
        return None
    need = q * pairs[-1][1]
    for le, count in pairs:
        if count >= need:
            return le
    return pairs[-1][0]


class BrokerDrops:
    """Follows Mosquitto's ``$SYS`` dropped-PUBLISH counter (published every ``sys_interval``)."""

    def __init__(self, url: str, username: str, password: str) -> None:
        self._client = MqttClient(MqttConfig(url=url, username=username, password=password,
                                             client_id=f"e2e-sys-{os.getpid()}"))
        self.value: int | None = None
        self._updated = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._client.start()
        await self._client.subscribe(SYS_DROPPED, qos=0)
        self._task = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        while True:
            for m in await self._client.receive_batch(100, timeout_s=1.0):
                self.value = int(m.payload)
                self._updated.set()

    async def fresh(self, timeout_s: float = 12.0) -> int | None:
        """The counter after its next publication (Mosquitto's default interval is 10 s)."""
        self._updated.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._updated.wait(), timeout_s)
        return self.value

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        await self._client.stop()
