"""A small shared cache for expensive city-wide answers: one computation per key at a time,
reused by every caller for ``ttl`` seconds (the map over 100,000 devices costs hundreds of
milliseconds; a dozen operators refreshing it should not cost a dozen times that)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class SharedCache(Generic[T]):
    def __init__(self, max_entries: int = 64) -> None:
        self._max = max_entries
        self._entries: dict[Hashable, tuple[float, T]] = {}
        self._locks: dict[Hashable, asyncio.Lock] = {}

    async def get(self, key: Hashable, ttl: float, compute: Callable[[], Awaitable[T]]) -> T:
        if ttl <= 0:
            return await compute()
        hit = self._entries.get(key)
        if hit is not None and time.monotonic() - hit[0] < ttl:
            return hit[1]
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:  # callers of a stale key wait for one computation, then share it
            hit = self._entries.get(key)
            if hit is not None and time.monotonic() - hit[0] < ttl:
                return hit[1]
            value = await compute()
            if len(self._entries) >= self._max:  # bounded, whatever keys callers invent
                self._entries.clear()
                self._locks = {key: lock}
            self._entries[key] = (time.monotonic(), value)
            return value
