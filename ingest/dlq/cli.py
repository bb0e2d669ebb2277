"""``citysense dlq stats|list|replay``: look into the dead-letter topic and replay after a fix."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from brokers.kafka import KafkaBus
    from citysense.settings import CommonSettings

dlq_app = typer.Typer(help="Dead letters: counts by reason, samples, replay.", no_args_is_help=True)

Reasons = Annotated[
    list[str] | None, typer.Option("--reason", "-r", help="only this reason code (repeatable)")
]
Idle = Annotated[float, typer.Option(help="stop reading after this many idle seconds")]


def _bus(client_id: str) -> tuple[CommonSettings, KafkaBus]:
    from brokers.kafka import KafkaBus, kafka_config
    from citysense.settings import CommonSettings, load_settings

    s = load_settings(CommonSettings)
    if not s.kafka_bootstrap:
        raise typer.BadParameter("CITYSENSE_KAFKA_BOOTSTRAP is not set")
    return s, KafkaBus(kafka_config(s, client_id))


@dlq_app.command("stats")
def dlq_stats(idle: Idle = 3.0) -> None:
    """Count dead letters by stage and reason code."""
    from ingest.dlq.core import scan, stats

    s, bus = _bus("citysense-dlq")
    found = asyncio.run(scan(bus, s.topic_dlq, idle_ms=int(idle * 1000)))
    counts = stats(found.letters)
    for (stage, reason), n in counts.most_common():
        typer.echo(f"{n:>10}  {stage:<10} {reason}")
    unreadable = f" ({found.unreadable} unreadable)" if found.unreadable else ""
    typer.echo(f"{len(found.letters):>10}  total{unreadable}")


@dlq_app.command("list")
def dlq_list(reason: Reasons = None, limit: int = 20, idle: Idle = 3.0) -> None:
    """Show samples: reason, source, device, message and the start of the original payload."""
    from ingest.dlq.core import matching, original_envelope, scan

    s, bus = _bus("citysense-dlq")
    found = asyncio.run(scan(bus, s.topic_dlq, idle_ms=int(idle * 1000)))
    keep = matching(set(reason) if reason else None, stage=None)
    shown = 0
    for d in found.letters:
        if not keep(d):
            continue
        when = dt.datetime.fromtimestamp(d.failed_ns / 1e9, tz=dt.UTC).isoformat(timespec="seconds")
        env = original_envelope(d)
        payload = env.payload if env else d.original
        source = f"{d.source_topic}[{d.source_partition}]@{d.source_offset}"
        typer.echo(f"{when} {d.reason_code} [{d.stage}] {source} device={d.device_id or '-'}\n"
                   f"    {d.message}\n    payload[{len(payload)}]: {payload[:120]!r}")
        shown += 1
        if shown >= limit:
            break


@dlq_app.command("replay")
def dlq_replay(reason: Reasons = None, idle: Idle = 3.0, yes: bool = False) -> None:
    """Re-publish the originals of normaliser dead letters to the raw topic (after a fix)."""
    from ingest.dlq.core import replay

    if not yes:
        which = "reasons " + ",".join(reason) if reason else "every reason"
        typer.confirm(f"replay {which} to the raw topic?", abort=True)
    s, bus = _bus("citysense-dlq-replay")
    result = asyncio.run(replay(bus, dlq_topic=s.topic_dlq, raw_topic=s.topic_raw,
                                reasons=set(reason) if reason else None, idle_ms=int(idle * 1000)))
    typer.echo(f"replayed {result.replayed} envelopes to {s.topic_raw}; "
               f"skipped {result.skipped} (no envelope)")
