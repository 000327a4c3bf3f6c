"""The one thread a cloud node's model runs on, granted to callers in priority order.

A verify round has an edge waiting on it with a round deadline; a cloud-only generation step or a
scoring pass does not. Every model call therefore asks for the thread with a priority, and when
the thread frees, the most urgent waiter goes next: a verify round waits at most for the call
that is running, never behind a queue of generation work.

A caller may also hold the thread across a few steps (``Grant``): wait for its turn, decide what
to compute once granted, then run it. The iteration loop does so, raising its grant's priority
while it waits when a verify round arrives.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import heapq
import itertools
import time
from collections.abc import Callable
from enum import IntEnum
from types import TracebackType
from typing import TypeVar

from cloud_node.errors import RequestError

T = TypeVar("T")


class Priority(IntEnum):
    """Who goes first on the model thread; lower values first."""

    VERIFY = 0  # iterations holding verify rounds: an edge waits on each, with a round deadline
    STEPS = 1  # step scoring and step writing of reasoning requests
    GENERATE = 2  # iterations of cloud-only generation only, and calibration


class Grant:
    """One turn on the thread: entered once granted, held until exited.

    While it waits, ``promote`` may raise its priority (never lower it); inside, ``call`` runs
    callables on the thread.
    """

    def __init__(self, thread: ModelThread, priority: Priority, order: int) -> None:
        self.thread = thread
        self.priority = priority
        self.order = order  # ranks waiters of one priority, lower first
        self.waiting: asyncio.Future[None] | None = None  # set while it waits its turn

    async def __aenter__(self) -> Grant:
        await self.thread._acquire(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.thread._release()

    def promote(self, priority: Priority) -> None:
        """Raise the priority of this grant if it still waits; a no-op otherwise."""
        self.thread._promote(self, priority)

    async def call(self, fn: Callable[[], T]) -> tuple[T, float, float]:
        """Run ``fn`` on the thread (held by this grant); its result, wall ms, thread CPU s."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.thread._pool, self.thread._timed, fn)


class ModelThread:
    """Runs callables on one worker thread, one at a time, the most urgent waiter first.

    Also measures how busy the thread is, counting the call in progress, so a busy fraction
    sampled in the middle of a long call is neither 0 nor, once the call ends, above 1.
    """

    def __init__(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="model")
        self._held = False
        self._stopped = False
        # a heap; a promoted grant has one entry per priority it held, the stale ones skipped
        self._waiters: list[tuple[int, int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._since: float | None = None  # perf_counter at the start of the running call
        self._urgent = 0  # waiters that outrank generation; read by a running iteration call
        self.busy_s = 0.0  # wall seconds of finished calls
        self.cpu_s = 0.0  # thread CPU seconds of finished calls

    def busy_seconds(self) -> float:
        """Wall seconds the thread has spent in calls, the running one included."""
        since = self._since  # read once: the worker thread may clear it meanwhile
        running = time.perf_counter() - since if since is not None else 0.0
        return self.busy_s + max(running, 0.0)

    def urgent_waiting(self) -> bool:
        """Whether a call that outranks generation waits: an iteration call checks this between
        iterations from the worker thread (reading an int is atomic) and returns the thread."""
        return self._urgent > 0

    @property
    def waiting(self) -> int:
        """Calls waiting for the thread (some may have been cancelled meanwhile)."""
        return len({id(fut) for *_, fut in self._waiters if not fut.done()})

    def grant(self, priority: Priority, order: int | None = None) -> Grant:
        """A turn on the thread at ``priority``, to enter with ``async with``; ``order`` ranks
        waiters of one priority (lower first), by default arrival order."""
        return Grant(self, priority, next(self._seq) if order is None else order)

    async def run(
        self, fn: Callable[[], T], priority: Priority, order: int | None = None
    ) -> tuple[T, float, float]:
        """Run ``fn`` on the thread once granted; its result, wall ms and thread CPU seconds.

        ``order`` ranks waiters of one priority (lower first); by default, arrival order.
        """
        async with self.grant(priority, order) as g:
            return await g.call(fn)

    def _timed(self, fn: Callable[[], T]) -> tuple[T, float, float]:
        t0, c0 = time.perf_counter(), time.thread_time()
        self._since = t0
        try:
            out = fn()
        finally:
            wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
            self._since = None
            self.busy_s += wall  # only this thread writes the totals
            self.cpu_s += cpu
        return out, wall * 1e3, cpu

    async def _acquire(self, g: Grant) -> None:
        if self._stopped:
            raise RequestError("unavailable", "cloud node is stopping")
        if not self._held and not self._waiters:
            self._held = True
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        g.waiting = fut
        heapq.heappush(self._waiters, (int(g.priority), g.order, next(self._seq), fut))
        self._urgent += g.priority < Priority.GENERATE
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # granted as it was cancelled: pass it on
                self._release()
            raise  # a cancelled waiter stays in the heap and is skipped when popped
        finally:
            self._urgent -= g.priority < Priority.GENERATE  # its priority now, promoted or not
            g.waiting = None

    def _promote(self, g: Grant, priority: Priority) -> None:
        fut = g.waiting
        if fut is None or fut.done() or priority >= g.priority:
            return
        self._urgent += (priority < Priority.GENERATE) - (g.priority < Priority.GENERATE)
        g.priority = priority
        heapq.heappush(self._waiters, (int(priority), g.order, next(self._seq), fut))

    def _release(self) -> None:
        while self._waiters:
            *_, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(None)  # the thread passes to this waiter, still held
                return
        self._held = False

    def shutdown(self) -> None:
        """Stop taking calls; waiters fail as unavailable, a running call finishes on its own."""
        self._stopped = True
        for *_, fut in self._waiters:
            if not fut.done():
                fut.set_exception(RequestError("unavailable", "cloud node is stopping"))
        self._waiters.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
