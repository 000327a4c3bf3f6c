"""Helpers several test modules share: bounded waits and a hold on the cloud's model thread."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

from cloud_node.model_thread import ModelThread, Priority


async def until(cond: Callable[[], bool], what: str, limit_s: float = 20.0) -> None:
    """Poll ``cond`` until it holds; fail naming ``what`` after ``limit_s`` (a hang guard)."""
    end = time.monotonic() + limit_s
    while not cond():
        assert time.monotonic() < end, f"never: {what}"
        await asyncio.sleep(0.002)


class Blocker:
    """Holds the model thread until released, so the test decides when model work starts."""

    def __init__(self, thread: ModelThread) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.task = asyncio.create_task(thread.run(self._hold, Priority.VERIFY))

    def _hold(self) -> None:
        self.entered.set()
        self.release.wait(30)

    async def held(self) -> None:
        await until(self.entered.is_set, "the model thread is held")

    async def done(self) -> None:
        self.release.set()
        await self.task
