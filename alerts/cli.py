"""``citysense rules ...`` and ``citysense alerts ...``."""

from __future__ import annotations

import asyncio
import getpass
from pathlib import Path
from typing import Annotated

import typer

from alerts.rule_file import RuleFileError, load

rules_app = typer.Typer(help="Alert rules: validate, apply (store in the database), list.",
                        no_args_is_help=True)
alerts_app = typer.Typer(help="The alert engine and its notifications.", no_args_is_help=True)

DEFAULT_RULES = Path(__file__).resolve().parent / "rules" / "default.yaml"


@rules_app.command("validate")
def validate(file: Annotated[Path, typer.Argument(help="rule file (YAML)")] = DEFAULT_RULES) -> None:
    """Check a rule file; print every problem with its line number (exit 1 if any)."""
    try:
        rule_file = load(file)
    except RuleFileError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{file}: {len(rule_file.rules)} rules, {len(rule_file.receivers)} receivers, valid")


@rules_app.command("apply")
def apply(file: Annotated[Path, typer.Argument(help="rule file (YAML)")] = DEFAULT_RULES,
          actor: Annotated[str, typer.Option(help="who applies (recorded)")] = "") -> None:
    """Store a rule file's rules in the database, all or nothing; rules the same file
    stored before and no longer lists are deleted. Running engines reload them."""
    from alerts.rules_db import apply_file

    try:
        rule_file = load(file)
    except RuleFileError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    version = asyncio.run(apply_file(rule_file, source=file.name, actor=actor or getpass.getuser()))
    typer.echo(f"applied {len(rule_file.rules)} rules from {file} (rules version {version})")


@rules_app.command("list")
def list_rules() -> None:
    """The rules stored in the database."""
    from alerts.rules_db import stored_rules

    for row in asyncio.run(stored_rules()):
        condition = row.definition.get("condition", {})
        typer.echo(f"{row.rule_id:28} {'on ' if row.enabled else 'off'} {condition.get('type', '?'):15}"
                   f" {row.source:16} {row.name}")


@alerts_app.command("run")
def run(verbose: bool = False) -> None:
    """Run the alert engine (readings topic -> alerts, transitions, notifications)."""
    from citysense.launch.alerts_runner import run_engine
    from citysense.launch.cli import _logging

    _logging(verbose)
    asyncio.run(run_engine())


@alerts_app.command("deliver")
def deliver(verbose: bool = False) -> None:
    """Run the webhook delivery worker (the outbox -> receivers)."""
    from citysense.launch.alerts_runner import run_delivery
    from citysense.launch.cli import _logging

    _logging(verbose)
    asyncio.run(run_delivery())


@alerts_app.command("parked")
def parked(limit: int = 50) -> None:
    """Webhook deliveries given up on (4xx, or out of attempts), newest first, with why."""
    from alerts.rules_db import parked_deliveries

    for outbox_id, receiver, key, error in asyncio.run(parked_deliveries(limit)):
        typer.echo(f"{outbox_id:>8} {receiver:16} {key:32} {error}")


@alerts_app.command("requeue")
def requeue(outbox_ids: Annotated[list[int], typer.Argument(help="ids from `alerts parked`")]) -> None:
    """Send parked deliveries again (after fixing the receiver)."""
    from alerts.rules_db import requeue_parked

    typer.echo(f"requeued {asyncio.run(requeue_parked(outbox_ids))}")
