"""What ``citysense up`` starts and stops: a small list of components.

A component is started in list order and stopped in reverse order; ``stop``
is idempotent and drains (a stage finishes and commits its batch in flight).
Alert engine and API plug in by adding one component each.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol


class Component(Protocol):
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def failed(self) -> BaseException | None:
        """The error that ended the component on its own, if it did."""
        ...


class Runnable(Protocol):
    def request_stop(self) -> None: ...

    async def run(self) -> None: ...


class StageComponent:
    """A pipeline stage (``run()`` until ``request_stop()``) as a component.

    ``ready`` (optional) is awaited at start, racing the stage's task, so a
    stage that fails while starting (a refused login) fails ``start()``.
    """

    def __init__(self, name: str, stage: Runnable, ready: Callable[[], Awaitable[object]] | None = None,
                 ) -> None:
        self.name = name
        self.stage = stage
        self._ready = ready
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self.stage.run(), name=self.name)
        if self._ready is None:
            await asyncio.sleep(0)
            return
        ready = asyncio.ensure_future(self._ready())
        await asyncio.wait([ready, self._task], return_when=asyncio.FIRST_COMPLETED)
        if self._task.done():
            ready.cancel()
            await self._task  # raises the start-up error
            raise RuntimeError(f"{self.name} ended while starting")

    def failed(self) -> BaseException | None:
        t = self._task
        if t is None or not t.done():
            return None
        return t.exception() if not t.cancelled() else None

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self.stage.request_stop()
        await asyncio.gather(task, return_exceptions=True)


class CallbackComponent:
    """A component made of two callables (embedded servers, API server)."""

    def __init__(self, name: str, start: Callable[[], Awaitable[None]],
                 stop: Callable[[], Awaitable[None]]) -> None:
        self.name = name
        self._start, self._stop = start, stop
        self._started = False

    async def start(self) -> None:
        await self._start()
        self._started = True

    def failed(self) -> BaseException | None:
        return None

    async def stop(self) -> None:
        if self._started:
            self._started = False
            await self._stop()
