"""Settings of the query API (``CITYSENSE_`` prefix), built once by ``citysense api``."""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field

from citysense.settings import CommonSettings


class ApiSettings(CommonSettings):
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8080, ge=1, le=65535)
    api_pool_size: int = Field(default=8, ge=1)
    # Every statement of a request is cancelled after this long (503, not a hung worker).
    api_statement_timeout_ms: int = Field(default=10_000, ge=100)
    api_page_default: int = Field(default=100, ge=1)
    api_page_max: int = Field(default=500, ge=1)
    # A series answer may hold at most this many points; more is refused with 422.
    api_max_points: int = Field(default=10_000, ge=10)
    api_max_range: timedelta = timedelta(days=400)
    # Per API key: a token bucket of this rate and burst (429 beyond it).
    api_rate_per_s: float = Field(default=50.0, gt=0)
    api_rate_burst: int = Field(default=200, ge=1)
    # A key is looked up again after this long (a revocation takes effect within it).
    api_key_cache_s: float = Field(default=5.0, ge=0)
    # Device status: online within late_factor x its report interval, late within offline_factor x.
    api_late_factor: float = Field(default=1.5, gt=0)
    api_offline_factor: float = Field(default=3.0, gt=0)
    # Live streams: consume the alerts and readings topics (off: SSE routes answer 503).
    api_live: bool = True
    api_sse_buffer: int = Field(default=256, ge=1)
    api_sse_ping_s: float = Field(default=15.0, gt=0)
    api_sse_send_timeout_s: float = Field(default=10.0, gt=0)
    # The overview is computed at most this often and shared by all callers.
    api_overview_cache_s: float = Field(default=2.0, ge=0)
    # The map (one status per device, aggregated) likewise, per cell size and kind.
    api_map_cache_s: float = Field(default=10.0, ge=0)
