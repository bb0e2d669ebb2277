"""Pure pieces of the API: cursors, bucket parsing, roles, key cache, rate limiter, keys."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi import HTTPException

from api import pagination
from api.auth import KeyCache, Principal, RateLimiter, token_digest
from api.routes.series import parse_bucket
from storage.apikeys import ApiKeyRow, hash_secret, split_token


def test_cursor_round_trip_and_refusals() -> None:
    assert pagination.decode(pagination.encode("brg-01"), str) == "brg-01"
    assert pagination.decode(pagination.encode(42), int) == 42
    assert pagination.decode(None, str) is None
    for bad, kind in (("!!", str), (pagination.encode(42), str), (pagination.encode("x"), int),
                      (pagination.encode(True), int), ("e30", str)):
        with pytest.raises(HTTPException) as caught:
            pagination.decode(bad, kind)
        assert caught.value.status_code == 422


@pytest.mark.parametrize(("text", "expected"), [
    ("60", timedelta(minutes=1)), ("0.5", timedelta(milliseconds=500)), ("PT1H", timedelta(hours=1)),
    ("P1D", timedelta(days=1)), (" PT15M ", timedelta(minutes=15)),
])
def test_bucket_parsing(text: str, expected: timedelta) -> None:
    assert parse_bucket(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "1e300", "nan", "PT", "inf"])
def test_bucket_refusals(text: str) -> None:
    with pytest.raises(HTTPException) as caught:
        parse_bucket(text)
    assert caught.value.status_code == 422


def test_roles_are_ordered() -> None:
    viewer, operator, admin = (Principal(1, "k", r) for r in ("viewer", "operator", "admin"))
    assert viewer.may("viewer") and not viewer.may("operator") and not viewer.may("admin")
    assert operator.may("operator") and not operator.may("admin")
    assert admin.may("viewer") and admin.may("operator") and admin.may("admin")
    assert not Principal(1, "k", "root").may("viewer")
    assert operator.actor == "key:k"


def test_key_cache_remembers_hits_and_misses_by_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr("api.auth.time.monotonic", lambda: now[0])
    cache = KeyCache(5.0, max_entries=2)
    row = ApiKeyRow(1, "k", "viewer", "abc", None, None)  # type: ignore[arg-type]
    assert cache.get(token_digest("t")) == (False, None)
    assert cache.put(token_digest("t"), row) == Principal(1, "k", "viewer")
    assert cache.put(token_digest("bad"), None) is None
    assert cache.get(token_digest("t")) == (True, Principal(1, "k", "viewer"))
    assert cache.get(token_digest("bad")) == (True, None)
    now[0] += 6
    assert cache.get(token_digest("t")) == (False, None)
    cache.put("a", None)
    cache.put("b", None)  # full: cleared, so a flood of bad tokens cannot grow it
    assert len(cache._entries) <= 2
    assert "t" not in str(cache._entries)


def test_rate_limiter_token_bucket(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    monkeypatch.setattr("api.auth.time.monotonic", lambda: now[0])
    limiter = RateLimiter(rate=2.0, burst=3)
    assert [limiter.take(1) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take(1) == pytest.approx(0.5)
    assert limiter.take(2) == 0.0  # another key has its own bucket
    now[0] += 0.5
    assert limiter.take(1) == 0.0
    now[0] += 100
    assert [limiter.take(1) for _ in range(4)][-1] > 0  # refills to the burst, not beyond


def test_tokens_split_and_hash() -> None:
    assert split_token("csk_abc_def") == ("abc", "def")
    for bad in ("", "csk_abc", "xyz_abc_def", "csk__def", "csk_abc_", "csk_a_b_c"):
        assert split_token(bad) is None
    assert hash_secret("s") == hash_secret("s") != hash_secret("t")
    assert len(hash_secret("s")) == 64


async def test_shared_cache_computes_once_per_key_and_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from api.cache import SharedCache

    now = [0.0]
    monkeypatch.setattr("api.cache.time.monotonic", lambda: now[0])
    calls: list[str] = []

    async def compute(key: str) -> str:
        calls.append(key)
        await asyncio.sleep(0)  # yield (not a timer: the loop clock is the patched one)
        return f"{key}{len(calls)}"

    cache: SharedCache[str] = SharedCache(max_entries=2)
    got = await asyncio.gather(*(cache.get("a", 10, lambda: compute("a")) for _ in range(5)))
    assert got == ["a1"] * 5 and calls == ["a"]  # concurrent callers share one computation
    assert await cache.get("a", 10, lambda: compute("a")) == "a1"
    now[0] = 11
    assert await cache.get("a", 10, lambda: compute("a")) == "a2"
    assert await cache.get("b", 0, lambda: compute("b")) == "b3"  # ttl 0: no caching
    assert await cache.get("b", 0, lambda: compute("b")) == "b4"
    for key in "cde":
        await cache.get(key, 10, lambda k=key: compute(k))  # type: ignore[misc]
    assert len(cache._entries) <= 2
