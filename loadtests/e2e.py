"""End-to-end benchmark: how many uplinks/s does the whole pipeline hold, with nothing lost?

    make bench                                     # the default ramp, 60 s per step
    .venv/bin/python -m loadtests.e2e --rates 1000,2000 --step-seconds 15 --no-ceilings

Starts a private Mosquitto, a fresh database and fresh topics (on the shared
PostgreSQL and Kafka), and ``citysense bridge|normalise|write`` as separate
processes (``e2e_stack``); then drives the ``scale`` scenario (100,000 devices,
its kind mix and faults) through the load generator's MQTT pool at QoS 1, one
step per offered rate. After each step it waits for the pipeline to drain
(bounded) and reports, per step:

- uplinks sent, acknowledged (PUBACK), on the raw topic (high watermark),
  dead-lettered (bridge and normaliser), dropped as duplicates, and lost
  (acknowledged - raw - bridge dead letters); Mosquitto's ``$SYS`` drop counter;
- readings produced (normaliser), offered and inserted (writer), rows counted in
  the database, and lost (produced - rows - rows the primary key absorbed);
- latency from the bridge's receive time (``received_ns``, carried in every
  record to the database's ``received_at``) to the commit of the readings'
  transaction: the writer observes ``now - received_ns`` per uplink right after
  the commit into a Prometheus histogram whose edges include 2 s, so p50/p95/p99
  are the upper edges of their buckets (exact against the 2 s objective); the
  MQTT hop before the bridge is the PUBACK latency (the broker acknowledges on
  receipt) plus the time in Mosquitto's queue for the bridge, which shows up as
  broker drops and raw-topic lag, not in this figure;
- consumer lag (records) of the normaliser and writer groups every second;
- CPU seconds per process and platform CPU µs per uplink and per reading.

A step is *held* when nothing is lost, every uplink sent is acknowledged, the
generator reached 97 % of the offered rate, the pipeline drained in time and
p99 < 2 s. Writes JSON and a PNG chart and prints a table. Traffic only to
127.0.0.1; every step is bounded and the run stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from citysense.settings import state_dir
from loadtests.e2e_measure import (
    BrokerDrops,
    CpuMeter,
    KafkaOffsets,
    Samples,
    cpu_seconds,
    delta,
    find_pid,
    histogram_delta,
    quantile_upper,
    scrape,
)
from loadtests.e2e_report import print_table, write_chart
from loadtests.e2e_stack import STAGES, Stack
from loadtests.e2e_statements import open_statements, print_statements
from simulators.load import build_streams, round_robin, run_load, with_faults
from simulators.mqtt_pool import MqttPool
from simulators.scenario import ScaleScenario, load_scenario
from simulators.scenario_registry import scale_devices

# PostgreSQL counts as our database's backends plus the cluster's WAL writer, checkpointer and
# background writer: the cluster is shared, and its other databases' work is not ours
# (``platform_cpu_s_cluster`` counts every PostgreSQL process instead).
PLATFORM = ("bridge", "normalise", "write", "mosquitto", "kafka", "postgres_our_db", "postgres_background")


class Bench:
    def __init__(self, a: argparse.Namespace, stack: Stack, drops: BrokerDrops) -> None:
        self.a, self.stack = a, stack
        self.offsets = KafkaOffsets(stack.kafka)
        self.drops = drops
        state = str(state_dir())  # the shared services' (their command lines name it)
        self.cpu = CpuMeter(
            {k: stack.pid(k) for k in stack.procs},
            mosquitto=find_pid("mosquitto", str(stack.broker_dir)),
            kafka=find_pid("kafka.Kafka", state),
            postmaster=find_pid("postgres", "-D", f"{state}/pg/data"),
            database=stack.database,
        )
        self.pool = MqttPool("127.0.0.1", stack.mqtt_port, username="citysense-loadgen",
                             password=stack.loadgen_password, size=a.connections)
        sc = load_scenario("scale")
        assert isinstance(sc, ScaleScenario)
        self.specs = specs = scale_devices(sc, a.devices)
        total = sum(r * a.step_seconds for r in a.rates)
        streams = build_streams(specs, seed=sc.seed, start_ns=time.time_ns(),
                                back_intervals=math.ceil(total / len(specs)))
        uplinks = round_robin(streams)
        self.uplinks, self.injector = (with_faults(uplinks, sc.faults.as_dict(), sc.seed)
                                       if a.faults else (uplinks, None))
        self.rows = 0
        self._base = (0, 0)  # (acked, raw high watermark) when the step started

    async def start(self) -> None:
        await self._register()
        await self.offsets.start()
        await self.pool.start()
        if self.drops.value is None:  # published every 10 s (when it changed); start from a known count
            await self.drops.fresh()

    async def _register(self) -> None:
        """The scale scenario's devices into the bench database, as `citysense devices import`
        would: a city's devices are registered (the overview counts only those, and storage
        keeps no hourly rollup for those that sample hourly)."""
        from simulators.scenario_registry import Registry as Specs
        from simulators.scenario_registry import registry_export
        from storage import registry

        export = registry_export(Specs("scale", 0, (), tuple(self.specs)))
        async with await psycopg.AsyncConnection.connect(self.stack.database_url) as conn:
            await registry.import_registry(conn, registry.Registry.model_validate(export))

    async def stop(self) -> None:
        await self.pool.stop()
        await self.offsets.stop()

    def scrape_all(self) -> dict[str, Samples]:
        """Per stage, the sum of its instances' samples (a second bridge is "bridge2")."""
        out: dict[str, Samples] = {name: {} for name in STAGES}
        for key, port in self.stack.metrics_ports.items():
            merged = out[key.rstrip("0123456789")]
            for sample, value in scrape(port).items():
                merged[sample] = merged.get(sample, 0.0) + value
        return out

    async def lags(self) -> dict[str, int]:
        t, g = self.stack.topics, self.stack.groups
        raw, readings = await self.offsets.high(t["raw"]), await self.offsets.high(t["readings"])
        return {
            "raw_high": raw, "readings_high": readings,
            # acknowledged by the broker but not yet on the raw topic: Mosquitto's queue for the bridge
            "bridge_backlog": (self.pool.stats.acked - self._base[0]) - (raw - self._base[1]),
            "normalise_lag": raw - await self.offsets.committed(g["normalise"], t["raw"]),
            "write_lag": readings - await self.offsets.committed(g["write"], t["readings"]),
        }

    async def count_rows(self) -> int:
        async with await psycopg.AsyncConnection.connect(self.stack.database_url) as conn:
            cur = await conn.execute("SELECT count(*) FROM readings")
            row = await cur.fetchone()
            return int(row[0]) if row else 0

    async def final_refresh(self) -> dict[str, Any]:
        """Recompute every rollup bucket still dirty and closed, on a connection whose backend's CPU
        is read from /proc: rollup work the writer's refresh left for later (its interval spaces
        it out) is then part of the run's cost, so runs with different intervals compare fairly.
        While the writer's own refresh holds the lock, this waits for it (bounded) and runs after:
        returning at once would leave what that refresh had not yet taken uncounted."""
        from storage import rollups

        async with await psycopg.AsyncConnection.connect(self.stack.database_url) as conn:
            backend = conn.info.backend_pid
            before, t = cpu_seconds(backend), time.perf_counter()
            waits, deadline = 0, time.monotonic() + 300
            while (report := await rollups.refresh(conn)).busy and time.monotonic() < deadline:
                waits += 1
                await asyncio.sleep(0.5)
            cpu_s, seconds = cpu_seconds(backend) - before, time.perf_counter() - t
            cur = await conn.execute("SELECT count(*) FROM readings_1h")
            h = (await cur.fetchone() or (0,))[0]
            return {"cpu_s": round(cpu_s, 3), "seconds": round(seconds, 2), "buckets": report.buckets,
                    "device_buckets": report.devices, "busy_waits": waits, "busy": report.busy,
                    "rollup_rows": {"readings_1h": h}}

    async def sample_lag(self, series: list[dict[str, float]], t0: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            series.append({"t": round(time.monotonic() - t0, 2), **(await self.lags())})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    async def drain(self, series: list[dict[str, float]], t0: float) -> bool:
        """Until the raw topic stops growing and both groups have committed everything (bounded)."""
        deadline = time.monotonic() + self.a.drain_timeout
        last, stable_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            lag = await self.lags()
            series.append({"t": round(time.monotonic() - t0, 2), **lag})
            if lag["raw_high"] != last:
                last, stable_since = lag["raw_high"], time.monotonic()
            elif (lag["normalise_lag"] == 0 and lag["write_lag"] == 0
                  and time.monotonic() - stable_since >= 3.0):
                return True
            await asyncio.sleep(0.5)
        return False

    async def step(self, rate: float) -> dict[str, Any]:
        a = self.a
        print(f"step: {rate:.0f} uplinks/s for {a.step_seconds:.0f} s", file=sys.stderr)
        drops0 = self.drops.value
        self._base = (self.pool.stats.acked, await self.offsets.high(self.stack.topics["raw"]))
        lag0 = await self.lags()
        m0, cpu0 = self.scrape_all(), self.cpu.sample()
        stats0 = (self.pool.stats.sent, self.pool.stats.acked, self.pool.stats.errors)
        lat0 = len(self.pool.stats.latencies_ns)
        series: list[dict[str, float]] = []
        t0 = time.monotonic()
        stop = asyncio.Event()
        sampler = asyncio.create_task(self.sample_lag(series, t0, stop))
        profiling = None
        if a.profile:
            from loadtests.e2e_profile import record

            pids = {k: self.stack.pid(k) for k in self.stack.procs}
            profiling = asyncio.create_task(record(pids, a.step_seconds, a.profile, f"{rate:.0f}"))
        result = await run_load(self.pool, self.uplinks, rate=rate, duration_s=a.step_seconds, qos=1,
                                progress=a.progress)
        load_s = time.monotonic() - t0
        profiles = {}
        if profiling is not None:
            from loadtests.e2e_profile import summarise

            profiles = {k: {"file": str(f), **summarise(f)} for k, f in (await profiling).items()}
        stop.set()
        await sampler
        drained = await self.drain(series, t0)
        drain_s = time.monotonic() - t0 - load_s
        drops1 = await self.drops.fresh()
        m1, cpu1 = self.scrape_all(), self.cpu.sample()
        lag1 = await self.lags()
        rows = await self.count_rows()
        stored, self.rows = rows - self.rows, rows
        s = self.pool.stats
        sent, acked, errors = s.sent - stats0[0], s.acked - stats0[1], s.errors - stats0[2]
        puback = sorted(s.latencies_ns[lat0:])
        b, n, w = m1["bridge"], m1["normalise"], m1["write"]
        b0, n0, w0 = m0["bridge"], m0["normalise"], m0["write"]
        raw = lag1["raw_high"] - lag0["raw_high"]
        readings_msgs = lag1["readings_high"] - lag0["readings_high"]
        bridge_dlq = delta(b, b0, "citysense_dead_letters_total")
        norm_dlq = delta(n, n0, "citysense_dead_letters_total")
        duplicates = delta(n, n0, "citysense_records_total", outcome="duplicates")
        produced = delta(n, n0, "citysense_records_total", outcome="readings")
        offered = delta(w, w0, "citysense_records_total", outcome="readings_offered")
        inserted = delta(w, w0, "citysense_records_total", outcome="readings_inserted")
        write_dlq = delta(w, w0, "citysense_dead_letters_total")
        uplinks_lost = acked - raw - bridge_dlq
        normalise_lost = raw - readings_msgs - norm_dlq - duplicates
        readings_lost = produced - stored - (offered - inserted)
        buckets = histogram_delta(w, w0, "citysense_receive_to_commit_seconds")
        cpu = {k: round(cpu1[k] - cpu0[k], 3) for k in cpu1}
        for name in STAGES:  # every instance of a stage counts as the stage
            cpu[name] = round(sum(v for k, v in cpu.items() if k.rstrip("0123456789") == name), 3)
        platform = sum(cpu[k] for k in PLATFORM)
        platform_cluster = platform - cpu["postgres_our_db"] - cpu["postgres_background"] + cpu["postgres"]
        p99 = quantile_upper(buckets, 0.99)
        achieved = sent / load_s if load_s else 0.0
        held = (uplinks_lost == 0 and normalise_lost == 0 and readings_lost == 0 and write_dlq == 0
                and acked == sent and errors == 0 and drained and achieved >= 0.97 * rate
                and p99 is not None and p99 <= a.max_p99)
        return {
            "offered_rate": rate, "achieved_rate": round(achieved, 1), "load_s": round(load_s, 2),
            "drain_s": round(drain_s, 2), "drained": drained, "held": held,
            "uplinks": {"sent": sent, "acked": acked, "send_errors": errors, "raw_topic": raw,
                        "dead_lettered_bridge": bridge_dlq, "dead_lettered_normaliser": norm_dlq,
                        "duplicates_dropped": duplicates, "lost_before_kafka": uplinks_lost,
                        "lost_in_normaliser": normalise_lost,
                        "broker_dropped": (drops1 - drops0) if drops0 is not None and drops1 is not None
                        else None},
            "readings": {"produced": produced, "readings_topic_messages": readings_msgs,
                         "offered": offered, "inserted": inserted, "rows_stored": stored,
                         "dead_lettered_writer": write_dlq, "lost": readings_lost},
            "offsets_end": lag1,
            "latency_s": {"from": "bridge receive", "to": "readings commit",
                          "p50": quantile_upper(buckets, 0.5), "p95": quantile_upper(buckets, 0.95),
                          "p99": p99, "buckets": buckets},
            "puback_ms": {q: round(puback[min(len(puback) - 1, int(q / 100 * len(puback)))] / 1e6, 2)
                          if puback else None for q in (50, 99)},
            "lag_series": series,
            "cpu_s": cpu,
            "platform_cpu_s": round(platform, 3),
            "platform_cpu_s_cluster": round(platform_cluster, 3),
            "cpu_us_per_uplink": round(platform / acked * 1e6, 1) if acked else None,
            "cpu_us_per_reading": round(platform / stored * 1e6, 2) if stored else None,
            "cpu_us_per_uplink_by_process": {k: round(cpu[k] / acked * 1e6, 1) if acked else None
                                             for k in (*PLATFORM, "postgres", "generator")},
            "faults": dict(self.injector.counts) if self.injector else {},
            "profiles": profiles,
            "generator": {"sent": result.sent, "elapsed_s": round(result.elapsed_s, 2)},
        }


async def main(a: argparse.Namespace) -> dict[str, Any]:
    stack = Stack(partitions=a.partitions, extra_env=dict(kv.split("=", 1) for kv in a.stage_env),
                  instances={"bridge": a.bridges, "normalise": a.normalisers, "write": a.writers})
    out: dict[str, Any] = {"args": vars(a), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        await stack.start()
        # Mosquitto publishes its $SYS counters when they change: follow it from the broker's start,
        # before the ceilings, so no publication is missed.
        drops = BrokerDrops(stack.mqtt_url, "citysense-bridge", stack.bridge_password)
        await drops.start()
        out["run_id"], out["database"], out["topics"] = stack.run_id, stack.database, stack.topics
        if a.ceilings:
            from loadtests.e2e_ceilings import ceilings

            out["ceilings"] = await ceilings(stack, seconds=a.ceiling_seconds)
        statements, why = await open_statements(stack.database_url)
        if statements is None:
            print(f"pg_stat_statements: not reported ({why})", file=sys.stderr)
        bench = Bench(a, stack, drops)
        await bench.start()
        if statements is not None:  # after the start: the migrations and setup are not the run's
            await statements.reset()
        steps: list[dict[str, Any]] = []
        out["steps"] = steps
        try:
            failed = 0
            cpu_start = bench.cpu.sample()
            for rate in a.rates:
                steps.append(await bench.step(rate))
                dead = [k for k in stack.procs if k not in stack.alive()]
                if dead:
                    raise RuntimeError(f"stage(s) exited during the run: {dead}")
                failed = 0 if steps[-1]["held"] else failed + 1
                if failed >= a.stop_after_failures:
                    break
            final = await bench.final_refresh()
            cpu_end = bench.cpu.sample()
            if statements is not None:
                out["statements"] = await statements.top()
            acked = sum(s["uplinks"]["acked"] for s in steps)
            stored = sum(s["readings"]["rows_stored"] for s in steps)
            whole = {k: round(cpu_end[k] - cpu_start[k], 3) for k in cpu_end}
            whole["postgres_our_db"] += final["cpu_s"]
            platform = sum(whole[k] for k in PLATFORM)
            out["run"] = {"acked": acked, "rows_stored": stored, "cpu_s": whole, "final_refresh": final,
                          "platform_cpu_s": round(platform, 3),
                          "cpu_us_per_uplink": round(platform / acked * 1e6, 1) if acked else None,
                          "postgres_our_db_us_per_uplink":
                              round(whole["postgres_our_db"] / acked * 1e6, 1) if acked else None,
                          "cpu_us_per_reading": round(platform / stored * 1e6, 2) if stored else None}
        finally:
            await bench.stop()
            await drops.stop()
        held = [s["offered_rate"] for s in steps if s["held"]]
        out["highest_rate_held"] = max(held) if held else None
    finally:
        await stack.stop()
    return out


def _args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")],
                    default=[1000.0, 2000.0, 3000.0, 4000.0, 5000.0, 7500.0, 10000.0],
                    help="offered uplinks/s, comma-separated (a ramp)")
    ap.add_argument("--step-seconds", type=float, default=60.0)
    ap.add_argument("--drain-timeout", type=float, default=60.0, help="seconds to wait after a step")
    ap.add_argument("--devices", type=int, default=100_000)
    ap.add_argument("--connections", type=int, default=8, help="generator's MQTT connections")
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--bridges", type=int, default=1, help="bridge processes (shared subscription)")
    ap.add_argument("--normalisers", type=int, default=1, help="normaliser processes (one group)")
    ap.add_argument("--writers", type=int, default=1, help="writer processes (one group)")
    ap.add_argument("--max-p99", type=float, default=2.0, help="seconds; a step above it is not held")
    ap.add_argument("--stop-after-failures", type=int, default=2, help="stop the ramp after N failed steps")
    ap.add_argument("--faults", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--ceilings", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--ceiling-seconds", type=float, default=10.0)
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--stage-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for the stage processes (repeatable), e.g. "
                         "CITYSENSE_ROLLUP_REFRESH_INTERVAL_S=0")
    ap.add_argument("--profile", type=Path, default=None, metavar="DIR",
                    help="py-spy every stage process during each step; raw stacks to DIR")
    ap.add_argument("--out", type=Path, default=Path("loadtests/results/e2e.json"))
    ap.add_argument("--chart", type=Path, default=None, help="PNG (default: --out with .png)")
    a = ap.parse_args(argv)
    if a.step_seconds <= 0 or a.step_seconds > 600 or any(r <= 0 or r > 100_000 for r in a.rates):
        ap.error("--step-seconds must be in (0, 600] and every rate in (0, 100000]")
    return a


def run(argv: list[str] | None = None) -> dict[str, Any]:
    a = _args(argv)
    result = asyncio.run(main(a))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1, default=str))
    chart = a.chart or a.out.with_suffix(".png")
    write_chart(result, chart)
    print_table(result)
    if result.get("statements"):
        print_statements(result["statements"])
    print(f"JSON: {a.out}  chart: {chart}")
    return result


if __name__ == "__main__":
    run()
