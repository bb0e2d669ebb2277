"""The end-to-end benchmark's table (stdout) and chart (PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLUMNS = ("offered/s", "achieved/s", "acked", "stored rows", "stored/acked", "lost", "broker drops",
           "p50 s", "p95 s", "p99 s", "CPU µs/uplink", "µs/reading", "held")


def _fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def step_row(s: dict[str, Any]) -> list[str]:
    u, r, lat = s["uplinks"], s["readings"], s["latency_s"]
    lost = u["lost_before_kafka"] + u["lost_in_normaliser"] + r["lost"]
    acked = u["acked"]
    stored_uplinks = u["raw_topic"] - u["dead_lettered_normaliser"] - u["duplicates_dropped"]
    ratio = f"{stored_uplinks / acked:.1%}" if acked else "-"
    return [_fmt(x) for x in (
        s["offered_rate"], s["achieved_rate"], acked, r["rows_stored"], ratio, int(lost),
        u["broker_dropped"], lat["p50"], lat["p95"], lat["p99"], s["cpu_us_per_uplink"],
        s["cpu_us_per_reading"], "yes" if s["held"] else "no")]


def print_table(result: dict[str, Any]) -> None:
    rows = [list(COLUMNS), *(step_row(s) for s in result.get("steps", []))]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    for i, r in enumerate(rows):
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    for s in result.get("steps", []):
        per = s["cpu_us_per_uplink_by_process"]
        parts = ", ".join(f"{k} {v}" for k, v in per.items() if v is not None)
        print(f"  {s['offered_rate']:.0f}/s CPU µs per uplink: {parts}")
    run = result.get("run")
    if run:
        print(f"  whole run (steps + drains + a final rollup refresh of what was still dirty, "
              f"{run['final_refresh']['cpu_s']} s): platform CPU {run['cpu_us_per_uplink']} µs/uplink, "
              f"{run['cpu_us_per_reading']} µs/reading; PostgreSQL (our database) "
              f"{run['postgres_our_db_us_per_uplink']} µs/uplink")
    for name, c in result.get("ceilings", {}).items():
        print(f"  ceiling {name}: {c}")
    print(f"highest rate held (0 lost, p99 <= {result['args']['max_p99']} s, "
          f"{result['args']['step_seconds']:.0f} s): {_fmt(result.get('highest_rate_held'))}")


def write_chart(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = result.get("steps", [])
    fig, ax = plt.subplots(2, 2, figsize=(12, 8))
    rates = [s["offered_rate"] for s in steps]
    a = ax[0][0]
    a.plot(rates, [s["achieved_rate"] for s in steps], "o-", label="sent/s")
    a.plot(rates, [s["uplinks"]["acked"] / max(s["load_s"], 1e-9) for s in steps], "s--", label="acked/s")
    a.plot(rates, [s["uplinks"]["raw_topic"] / max(s["load_s"], 1e-9) for s in steps], "^:",
           label="on raw topic/s")
    a.set(title="throughput", xlabel="offered uplinks/s", ylabel="uplinks/s")
    a.legend()
    a = ax[0][1]
    for q in ("p50", "p95", "p99"):
        a.plot(rates, [s["latency_s"][q] for s in steps], "o-", label=q)
    a.axhline(result["args"]["max_p99"], color="red", lw=0.8)
    a.set(title="bridge receive -> DB commit", xlabel="offered uplinks/s", ylabel="s", yscale="log")
    a.legend()
    a = ax[1][0]
    for s in steps:
        series = s["lag_series"]
        a.plot([p["t"] for p in series],
               [p["bridge_backlog"] + p["normalise_lag"] + p["write_lag"] for p in series],
               label=f"{s['offered_rate']:.0f}/s")
    a.set(title="backlog: broker queue + normaliser + writer lag", xlabel="s into step", ylabel="records")
    a.legend(fontsize=7)
    a = ax[1][1]
    bottom = [0.0] * len(steps)
    for proc in ("bridge", "normalise", "write", "mosquitto", "kafka", "postgres_our_db",
                 "postgres_background"):
        vals = [s["cpu_us_per_uplink_by_process"][proc] or 0.0 for s in steps]
        a.bar([str(int(r)) for r in rates], vals, bottom=bottom, label=proc)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    a.set(title="platform CPU µs per uplink", xlabel="offered uplinks/s", ylabel="µs")
    a.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
