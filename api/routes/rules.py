"""Alert rules (placeholder until the rule model lands; see rules routes below)."""

from __future__ import annotations

from fastapi import APIRouter

from api.routes import V1

router = APIRouter(prefix=f"{V1}/rules", tags=["rules"])
