"""Opaque keyset cursors: the last key of a page, base64url-encoded JSON."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from api.errors import unprocessable


def encode(key: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(key, separators=(",", ":")).encode()).decode().rstrip("=")


def decode(cursor: str | None, kind: type) -> Any:
    """The key in ``cursor`` (None for the first page); 422 when it is not one of ours."""
    if cursor is None:
        return None
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise unprocessable(["query", "cursor"], "not a cursor from a previous page") from None
    if not isinstance(key, kind) or isinstance(key, bool):
        raise unprocessable(["query", "cursor"], "not a cursor from a previous page")
    return key
