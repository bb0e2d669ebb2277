"""Who the caller's key is (the dashboard shows operator buttons by it)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from api.deps import Viewer
from api.errors import ERRORS
from api.routes import V1

router = APIRouter(prefix=V1, tags=["auth"], responses=ERRORS)


class Me(BaseModel):
    name: str
    role: str


@router.get("/me", response_model=Me)
async def me(who: Viewer) -> Me:
    return Me(name=who.name, role=who.role)
