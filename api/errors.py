"""HTTP errors with bodies that say why.

Every 4xx body is ``{"detail": ...}``: a sentence for 401/403/404/409/429/503,
and for 422 the same list of ``{loc, msg, type}`` FastAPI gives for request
validation, so clients (and the OpenAPI schema) see one shape.
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException
from pydantic import BaseModel


class ErrorBody(BaseModel):
    detail: str


def unprocessable(loc: list[str], msg: str) -> HTTPException:
    return HTTPException(422, detail=[{"loc": loc, "msg": msg, "type": "value_error"}])


def not_found(what: str) -> HTTPException:
    return HTTPException(404, detail=f"{what} not found")


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "no API key, or an unknown or revoked one"},
    403: {"model": ErrorBody, "description": "the key's role may not do this"},
    429: {"model": ErrorBody, "description": "rate limit of this key exceeded"},
    503: {"model": ErrorBody, "description": "database unavailable or too slow"},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody, "description": "unknown id"}}
