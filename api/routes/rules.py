"""Alert rules (placeholder until the rule model lands; see rules routes below)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/rules", tags=["rules"])
