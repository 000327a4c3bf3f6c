"""User-space TCP link emulator: per-direction latency, jitter, bandwidth, resets and blackholes.

The kernel here has no netem, so links are emulated above TCP (see :mod:`.datapath` for how
bytes are timed). Each accepted connection runs ``client -> [uplink] -> upstream`` and
``upstream -> [downlink] -> client``; one :class:`LinkProxy` is one link, so connections share
its bandwidth. Specs live in :mod:`.spec` and are re-exported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from dataclasses import dataclass, replace
from types import TracebackType
from typing import TYPE_CHECKING, Any

from node_runtime.serving import log_event
from simulations.link.datapath import Connection, PreciseTimer, Transmitter
from simulations.link.spec import (
    Change,
    DirectionSpec,
    LinkSpec,
    Schedule,
    ScheduleStep,
    parse_hostport,
)

if TYPE_CHECKING:
    from simulations.link.threaded import ThreadedLink

__all__ = [
    "DirectionSpec",
    "LinkCounters",
    "LinkProxy",
    "LinkSpec",
    "ProxyConfig",
    "Schedule",
    "ScheduleStep",
    "parse_hostport",
]

logger = logging.getLogger("tandem.link")


@dataclass(frozen=True)
class ProxyConfig:
    """Where a :class:`LinkProxy` listens and forwards, and its resource bounds."""

    upstream: str  # "host:port" every accepted connection is forwarded to
    listen: str = "127.0.0.1:0"  # port 0 lets the kernel pick; read it back from LinkProxy.address
    read_bytes: int = 64 * 1024  # largest chunk read from a socket at once
    max_queued_bytes: int = 4 * 1024 * 1024  # per connection and direction; > bandwidth x delay
    seed: int = 0  # seeds jitter and reset draws so an experiment repeats
    connect_timeout_s: float = 5.0  # deadline for the upstream connect of each connection


@dataclass
class LinkCounters:
    """Totals since the proxy started; :meth:`LinkProxy.counters` returns a copy."""

    bytes_up: int = 0  # payload bytes delivered client -> upstream
    bytes_down: int = 0  # payload bytes delivered upstream -> client
    connections: int = 0  # connections accepted
    active: int = 0  # connections open now
    resets: int = 0  # connections reset by the loss model or reset_all()
    upstream_failures: int = 0  # accepted connections whose upstream could not be reached


class LinkProxy:
    """An emulated link in front of one upstream TCP service.

    ``async with LinkProxy(ProxyConfig(upstream="127.0.0.1:50051"), spec) as link:`` then
    connect to ``link.address``. Change it live with :meth:`set`, script changes with a
    :class:`Schedule`, or run it on a background thread with :meth:`start_in_thread`.
    """

    def __init__(
        self, config: ProxyConfig, spec: LinkSpec | None = None, schedule: Schedule | None = None
    ) -> None:
        parse_hostport(config.upstream)  # fail at construction, not at the first connection
        self.config = config
        self._spec = spec or LinkSpec()
        self._schedule = schedule
        self.counters_ = LinkCounters()
        self._tx = {"uplink": Transmitter(), "downlink": Transmitter()}
        self._changed = asyncio.Event()
        self._conns: dict[int, tuple[Connection, asyncio.Task[Any]]] = {}
        self._ids = itertools.count(1)
        self._server: asyncio.AbstractServer | None = None
        self._address = ""
        self._bg: set[asyncio.Task[None]] = set()
        self._timer = PreciseTimer()

    @property
    def spec(self) -> LinkSpec:
        """The spec in force now."""
        return self._spec

    @property
    def address(self) -> str:
        """``"host:port"`` actually bound (valid after start)."""
        if not self._address:
            raise RuntimeError("the link proxy is not started")
        return self._address

    @property
    def port(self) -> int:
        """The bound port (valid after start)."""
        return parse_hostport(self.address)[1]

    def counters(self) -> LinkCounters:
        """A snapshot of the counters."""
        return replace(self.counters_, active=len(self._conns))

    def transmitter(self, direction: str) -> Transmitter:
        """The shared serialization point of ``direction``."""
        return self._tx[direction]

    def count(self, direction: str, nbytes: int) -> None:
        """Account delivered bytes."""
        if direction == "uplink":
            self.counters_.bytes_up += nbytes
        else:
            self.counters_.bytes_down += nbytes

    def set(self, change: Change | None = None, /, **settings: Any) -> LinkSpec:
        """Change the link now (a LinkSpec, a partial mapping, and/or keyword settings).

        Applies to bytes read from now on; bytes already in flight keep their release time,
        except that a blackhole holds them. Call it from the proxy's event loop
        (:class:`ThreadedLink` forwards calls from other threads).
        """
        spec = self._spec.changed(change) if change is not None else self._spec
        self._spec = spec.changed(settings)
        old, self._changed = self._changed, asyncio.Event()
        old.set()  # wake writers holding bytes behind a blackhole
        log_event(logger, "link.set", spec=self._spec.to_dict())
        return self._spec

    async def wait_release(self, release: float, direction: str) -> None:
        """Sleep until ``release``; while the direction is blackholed, hold the bytes and then
        charge them one more latency once the path is back (as a TCP retransmission would).

        Uses the precise timer: asyncio's own timers are up to 1 ms late.
        """
        loop = asyncio.get_running_loop()
        while True:
            spec = self._spec.direction(direction)
            if spec.blackhole:
                await self._changed.wait()
                back = self._spec.direction(direction)
                release = max(release, loop.time() + back.latency_ms / 1e3)
                continue
            delay = release - loop.time()
            if delay <= 0:
                return
            await self._timer.sleep(delay)

    def play(self, schedule: Schedule) -> asyncio.Task[None]:
        """Start applying ``schedule`` (times count from now); cancelled on stop."""
        task = asyncio.create_task(self._play(schedule))
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)
        return task

    async def _play(self, schedule: Schedule) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for step in schedule.steps:
            await asyncio.sleep(max(0.0, start + step.at_s - loop.time()))
            log_event(logger, "link.schedule_step", at_s=step.at_s)
            self.set(step.change)

    def reset_all(self, reason: str = "reset_all") -> int:
        """Reset every open connection now; returns how many."""
        conns = [c for c, _ in self._conns.values()]
        for conn in conns:
            conn.reset(reason)
        return len(conns)

    async def start(self) -> LinkProxy:
        """Bind and start accepting (and playing the schedule given at construction)."""
        host, port = parse_hostport(self.config.listen)
        self._server = await asyncio.start_server(self._accept, host, port)
        bound = self._server.sockets[0].getsockname()
        self._address = f"{bound[0]}:{bound[1]}"
        self._timer = PreciseTimer()  # fresh per start: a stopped timer's thread has exited
        self._timer.start()
        log_event(
            logger,
            "link.started",
            address=self._address,
            upstream=self.config.upstream,
            spec=self._spec.to_dict(),
        )
        if self._schedule is not None:
            self.play(self._schedule)
        return self

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Stop accepting, close every connection, cancel the schedule."""
        if self._server is None:
            return
        self._server.close()
        for task in list(self._bg):
            task.cancel()
        for conn, task in list(self._conns.values()):
            conn.close()
            task.cancel()
        pending = [t for _, t in self._conns.values()] + list(self._bg)
        if pending:
            await asyncio.wait(pending, timeout=timeout_s)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), timeout_s)
        self._server = None
        self._timer.close()
        log_event(logger, "link.stopped", **vars(self.counters()))

    async def __aenter__(self) -> LinkProxy:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def start_in_thread(self, start_timeout_s: float = 5.0) -> ThreadedLink:
        """Run this proxy on its own event loop in a daemon thread, for synchronous callers."""
        from simulations.link.threaded import ThreadedLink  # the thread helper builds on us

        return ThreadedLink(self).start(start_timeout_s)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cid = next(self._ids)
        conn = Connection(self, cid, reader, writer)
        task = asyncio.current_task()
        assert task is not None
        self._conns[cid] = (conn, task)
        self.counters_.connections += 1
        peer = str(writer.get_extra_info("peername"))
        log_event(logger, "link.connection_open", conn=cid, peer=peer)
        try:
            await conn.run()
        except asyncio.CancelledError:
            # stop() cancels handlers; ending normally keeps asyncio's stream callback from
            # calling exception() on a cancelled task (it raises there on Python 3.11)
            conn.close()
        finally:
            self._conns.pop(cid, None)
            log_event(logger, "link.connection_closed", conn=cid, reset=conn.reset_reason)
