"""Rate-limited logging: one line per repeated warning every few seconds, with a count.

During a Kafka outage aiokafka logs a connect error per node per retry and our
retry loops a warning per attempt: thousands of identical lines a second under
load, enough to fill a disk in a long outage. :class:`RepeatFilter` sits on the
root handlers and lets the first WARNING-or-worse record of a kind through
(kind = logger name + level + unformatted message template, so the same error
with other arguments is the same kind), drops the repeats for ``window_s``,
and lets the next one after that through with the number it dropped.
INFO and DEBUG pass untouched (connection changes are INFO and rare).

Every WARNING-or-worse record is counted in ``citysense_log_messages_total``
and every dropped one in ``citysense_log_suppressed_total`` (labels: level,
logger: a small fixed set of module names, never message text).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from citysense.metrics import Metrics

DEFAULT_WINDOW_S = 10.0


class RepeatFilter(logging.Filter):
    def __init__(
        self, window_s: float = DEFAULT_WINDOW_S, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.window_s = window_s
        self.metrics: Metrics | None = None
        self._clock = clock
        self._lock = threading.Lock()  # paho's and aiokafka's threads log too
        # kind -> (time the last line went out, records dropped since)
        self._kinds: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        metrics = self.metrics
        if metrics is not None:
            metrics.log_messages.labels(record.levelname, record.name).inc()
        kind = (record.name, record.levelno, str(record.msg))
        now = self._clock()
        with self._lock:
            last = self._kinds.get(kind)
            if last is not None and now - last[0] < self.window_s:
                self._kinds[kind] = (last[0], last[1] + 1)
                if metrics is not None:
                    metrics.log_suppressed.labels(record.levelname, record.name).inc()
                return False
            self._kinds[kind] = (now, 0)
            if len(self._kinds) > 10_000:  # unbounded templates (f-strings): forget the oldest
                for stale in sorted(self._kinds, key=lambda k: self._kinds[k][0])[:5_000]:
                    del self._kinds[stale]
        if last is not None and last[1]:
            record.msg = f"{record.msg} [{last[1]} more like this suppressed in {now - last[0]:.0f}s]"
        return True


def install(window_s: float = DEFAULT_WINDOW_S) -> RepeatFilter:
    """Put one :class:`RepeatFilter` on every root handler (idempotent); returns it."""
    root = logging.getLogger()
    for handler in root.handlers:
        for f in handler.filters:
            if isinstance(f, RepeatFilter):
                return f
    repeat = RepeatFilter(window_s)
    for handler in root.handlers:
        handler.addFilter(repeat)
    return repeat


def attach_metrics(metrics: Metrics) -> None:
    """Count into ``metrics`` from the installed filter(s), if any."""
    for handler in logging.getLogger().handlers:
        for f in handler.filters:
            if isinstance(f, RepeatFilter):
                f.metrics = metrics
