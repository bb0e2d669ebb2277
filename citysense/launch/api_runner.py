"""Run the query API under uvicorn until SIGTERM/SIGINT (uvicorn drains requests, the
lifespan ends live streams and closes the pool)."""

from __future__ import annotations

import logging

import uvicorn

from api.app import create_app
from api.settings import ApiSettings
from citysense.settings import load_settings


def run_api(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    settings = load_settings(ApiSettings)
    # access_log off: request lines would carry query strings; keys travel only in headers anyway.
    uvicorn.run(create_app(settings), host=settings.api_host, port=settings.api_port, log_level="info",
                access_log=False, timeout_graceful_shutdown=5)
