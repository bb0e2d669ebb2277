"""``citysense apikey create|list|revoke`` and ``citysense api``."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from citysense.settings import CommonSettings, load_settings

apikey_app = typer.Typer(help="API keys (roles viewer, operator, admin).", no_args_is_help=True)


def _url() -> str:
    settings = load_settings(CommonSettings)
    if settings.database_url is None:
        typer.echo("CITYSENSE_DATABASE_URL is not set (run `citysense services up` or export it)", err=True)
        raise typer.Exit(2)
    return settings.database_url.get_secret_value()


@apikey_app.command("create")
def create(
    name: Annotated[str, typer.Option(help="who or what uses the key")],
    role: Annotated[str, typer.Option(help="viewer, operator or admin")] = "viewer",
) -> None:
    """Create a key and print it once (only its hash is stored)."""
    import psycopg

    from storage import apikeys

    if role not in apikeys.ROLES:
        typer.echo(f"--role must be one of {', '.join(apikeys.ROLES)}", err=True)
        raise typer.Exit(2)

    async def go() -> str:
        async with await psycopg.AsyncConnection.connect(_url()) as conn:
            _, token = await apikeys.create_key(conn, name, role)
            return token

    try:
        token = asyncio.run(go())
    except apikeys.ApiKeyError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    typer.echo(token)


@apikey_app.command("list")
def list_() -> None:
    """Keys with name, role, prefix and state (never the key)."""
    import psycopg

    from storage import apikeys

    async def go() -> list[apikeys.ApiKeyRow]:
        async with await psycopg.AsyncConnection.connect(_url()) as conn:
            return await apikeys.list_keys(conn)

    for k in asyncio.run(go()):
        state = f"revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "active"
        typer.echo(f"{k.key_id}\t{k.name}\t{k.role}\tcsk_{k.prefix}_…\t{state}")


@apikey_app.command("revoke")
def revoke(name_or_prefix: Annotated[str, typer.Argument(help="the key's name or prefix")]) -> None:
    """Revoke a key (effective within CITYSENSE_API_KEY_CACHE_S)."""
    import psycopg

    from storage import apikeys

    async def go() -> int:
        async with await psycopg.AsyncConnection.connect(_url()) as conn:
            return await apikeys.revoke_key(conn, name_or_prefix)

    n = asyncio.run(go())
    typer.echo(f"revoked {n} key(s)")
    if n == 0:
        raise typer.Exit(1)


def api_command(verbose: bool = False) -> None:
    """Serve the query API and the dashboard (uvicorn, CITYSENSE_API_HOST/PORT)."""
    from citysense.launch.api_runner import run_api

    run_api(verbose)
