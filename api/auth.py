"""API-key authentication, roles and per-key rate limits.

Roles are ordered: viewer < operator < admin; a route names the least role it
needs. Keys are looked up by ``storage.apikeys`` (hashed, constant-time
compared) and cached for ``api_key_cache_s`` under the SHA-256 of the token,
so neither the cache nor any log line holds a token.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from storage.apikeys import ApiKeyRow

RANK = {"viewer": 0, "operator": 1, "admin": 2}


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: int
    name: str
    role: str

    def may(self, role: str) -> bool:
        return RANK.get(self.role, -1) >= RANK[role]

    @property
    def actor(self) -> str:
        """How this key is named in audit columns (``acknowledged_by`` ...)."""
        return f"key:{self.name}"


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class KeyCache:
    def __init__(self, ttl_s: float, max_entries: int = 10_000) -> None:
        self._ttl = ttl_s
        self._max = max_entries
        self._entries: dict[str, tuple[float, Principal | None]] = {}

    def get(self, digest: str) -> tuple[bool, Principal | None]:
        hit = self._entries.get(digest)
        if hit is None or hit[0] < time.monotonic():
            return False, None
        return True, hit[1]

    def put(self, digest: str, row: ApiKeyRow | None) -> Principal | None:
        principal = Principal(row.key_id, row.name, row.role) if row else None
        if self._ttl > 0:
            if len(self._entries) >= self._max:
                self._entries.clear()  # bounded: a flood of bad tokens cannot grow it
            self._entries[digest] = (time.monotonic() + self._ttl, principal)
        return principal


class RateLimiter:
    """A token bucket per key: ``rate`` requests per second, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._buckets: dict[int, tuple[float, float]] = {}

    def take(self, key_id: int) -> float:
        """0 when allowed, else the seconds until a request would be."""
        now = time.monotonic()
        tokens, last = self._buckets.get(key_id, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        if tokens < 1:
            self._buckets[key_id] = (tokens, now)
            return (1 - tokens) / self._rate
        self._buckets[key_id] = (tokens - 1, now)
        return 0.0
