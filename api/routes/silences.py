"""Silences: hold back notifications of matching alerts for a while (operator)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Path

from api.alert_models import SilenceIn, SilenceOut
from api.deps import ConnDep, Operator, Viewer
from api.errors import ERRORS, NOT_FOUND, not_found, unprocessable
from api.routes import V1
from storage import alert_rules_store

router = APIRouter(prefix=f"{V1}/silences", tags=["alerts"], responses=ERRORS)


@router.get("", response_model=list[SilenceOut])
async def list_silences(_: Viewer, conn: ConnDep) -> list[SilenceOut]:
    """Every silence not yet expired by hand (including future and past windows)."""
    return [SilenceOut.model_validate(s) for s in await alert_rules_store.list_silences(conn)]


@router.post("", response_model=SilenceOut, status_code=201)
async def create_silence(body: SilenceIn, who: Operator, conn: ConnDep) -> SilenceOut:
    starts = body.starts_at or datetime.now(UTC)
    if body.ends_at <= starts:
        raise unprocessable(["body", "ends_at"], "ends_at must be after starts_at (or now)")
    silence_id = await alert_rules_store.create_silence(conn, body.selector, starts, body.ends_at, who.actor,
                                                        body.reason)
    for s in await alert_rules_store.list_silences(conn):
        if s.silence_id == silence_id:
            return SilenceOut.model_validate(s)
    raise not_found(f"silence {silence_id}")


@router.delete("/{silence_id}", status_code=204, responses=NOT_FOUND)
async def expire_silence(silence_id: Annotated[int, Path(ge=1, le=2**62)], _: Operator,
                         conn: ConnDep) -> None:
    if not await alert_rules_store.expire_silence(conn, silence_id):
        raise not_found(f"active silence {silence_id}")
