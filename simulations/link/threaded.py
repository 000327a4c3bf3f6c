"""Run a :class:`LinkProxy` on its own event loop in a background thread, for synchronous code."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from simulations.link.proxy import LinkCounters, LinkProxy
    from simulations.link.spec import Change, LinkSpec

T = TypeVar("T")


class ThreadedLink:
    """A started :class:`LinkProxy` owned by a daemon thread.

    ``with LinkProxy(cfg, spec).start_in_thread() as link:`` then connect to ``link.address``.
    Every method hops onto the proxy's loop, so the proxy is only ever touched by its own thread.
    """

    def __init__(self, proxy: LinkProxy) -> None:
        self.proxy = proxy
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="tandem-link", daemon=True)
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    def start(self, timeout_s: float = 5.0) -> ThreadedLink:
        """Start the thread and wait until the proxy is listening."""
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError(f"link proxy did not start within {timeout_s} s")
        if self._error is not None:
            raise RuntimeError("link proxy failed to start") from self._error
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        try:
            await self.proxy.start()
        except BaseException as exc:  # reported to the starting thread, not lost in this one
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.proxy.stop()

    def call(self, fn: Callable[..., T], *args: Any, timeout_s: float = 5.0, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` on the proxy's loop and return its result."""
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # handed back to the calling thread
                done.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return done.result(timeout_s)

    @property
    def address(self) -> str:
        """``"host:port"`` the proxy listens on."""
        return self.proxy.address

    @property
    def port(self) -> int:
        """The port the proxy listens on."""
        return self.proxy.port

    @property
    def spec(self) -> LinkSpec:
        """The spec in force now (specs are immutable, so reading across threads is safe)."""
        return self.proxy.spec

    def set(self, change: Change | None = None, /, **settings: Any) -> LinkSpec:
        """:meth:`LinkProxy.set` from any thread."""
        return self.call(self.proxy.set, change, **settings)

    def counters(self) -> LinkCounters:
        """:meth:`LinkProxy.counters` from any thread."""
        return self.call(self.proxy.counters)

    def reset_all(self, reason: str = "reset_all") -> int:
        """:meth:`LinkProxy.reset_all` from any thread."""
        return self.call(self.proxy.reset_all, reason)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the proxy (closing its connections) and join the thread."""
        if self._thread.is_alive() and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed on its own meanwhile
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise TimeoutError(f"link proxy thread did not stop within {timeout_s} s")

    def __enter__(self) -> ThreadedLink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
