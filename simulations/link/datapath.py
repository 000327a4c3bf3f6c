"""The data path of the link emulator: one connection, two pipes, a shared transmitter.

Every chunk read from one side is stamped with a release time (serialization on the direction's
shared transmitter, then latency + jitter) and a writer task delivers it when due, so chunks are
pipelined: N back-to-back chunks arrive about one latency later, not N latencies.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import math
import random
import socket
import struct
import threading
import time
from typing import TYPE_CHECKING

from node_runtime.serving import log_event
from simulations.link.spec import parse_hostport

if TYPE_CHECKING:
    from simulations.link.proxy import LinkProxy

logger = logging.getLogger("tandem.link")

RESET_TICK_S = 0.02  # how often each connection draws its reset lottery
SEGMENT_S = 0.005  # bandwidth-limited chunks are cut to ~5 ms of airtime, like packets in a train


class PreciseTimer:
    """Sub-millisecond sleeps for one event loop, from one helper thread.

    asyncio's epoll loop rounds every timeout up to a whole millisecond, so a plain sleep is
    0-1 ms late depending on where in the millisecond it started: too coarse for a LAN link or
    a 10% RTT check. The helper thread waits on a condition variable (ns resolution) and wakes
    the loop through ``call_soon_threadsafe``, which interrupts epoll at once.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind to the running loop and start the helper thread."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="tandem-link-timer", daemon=True)
        self._thread.start()

    async def sleep(self, delay: float) -> None:
        """Sleep ``delay`` seconds, give or take a few tens of microseconds."""
        assert self._loop is not None, "PreciseTimer.start() first"
        fut: asyncio.Future[None] = self._loop.create_future()
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._seq), fut))
            self._cond.notify()
        await fut

    def close(self) -> None:
        """Stop the helper thread (pending sleeps are left to their tasks' cancellation)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(1.0)

    def _run(self) -> None:
        assert self._loop is not None
        with self._cond:
            while not self._closed:
                if not self._heap:
                    self._cond.wait()
                    continue
                wait = self._heap[0][0] - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                fut = heapq.heappop(self._heap)[2]
                try:
                    self._loop.call_soon_threadsafe(_wake, fut)
                except RuntimeError:  # the loop is closed: nobody is waiting any more
                    return


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():  # a cancelled sleeper has already gone
        fut.set_result(None)


class Transmitter:
    """The serialization point of one direction, shared by all connections as on a real link."""

    def __init__(self) -> None:
        self.free_at = 0.0  # loop time when the last queued byte has left the transmitter

    def send(self, nbytes: int, now: float, mbit: float) -> float:
        """Queue ``nbytes`` and return when its last bit is on the wire."""
        if mbit <= 0:
            return now
        self.free_at = max(now, self.free_at) + nbytes * 8 / (mbit * 1e6)
        return self.free_at


def abort(writer: asyncio.StreamWriter, rst: bool) -> None:
    """Close now; with ``rst`` the kernel sends RST instead of FIN (SO_LINGER 0)."""
    if rst:
        sock = writer.get_extra_info("socket")
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class Pipe:
    """One direction of one connection: a reader stamping release times, a writer honouring them.

    Bytes are queued between the two (bounded by ``max_queued_bytes``: the reader stops reading,
    so TCP pushes back on the sender) and released in order: jitter never reorders a stream.
    A chunk drawing a short delay waits for the one before it, so in a back-to-back stream the
    added delay tends toward the jitter maximum; isolated messages see the mean.
    """

    def __init__(
        self,
        proxy: LinkProxy,
        direction: str,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        rng: random.Random,
    ) -> None:
        self._proxy, self._dir, self._src, self._dst, self._rng = proxy, direction, src, dst, rng
        self._queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        self._queued = 0
        self._space = asyncio.Event()
        self._last_release = 0.0

    def tasks(self) -> list[asyncio.Task[None]]:
        """Start the reader and writer."""
        return [asyncio.create_task(self._read()), asyncio.create_task(self._write())]

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        limit = self._proxy.config.max_queued_bytes
        while True:
            while self._queued >= limit:
                self._space.clear()
                await self._space.wait()
            data = await self._src.read(self._proxy.config.read_bytes)
            if not data:
                self._queue.put_nowait(None)
                return
            now = loop.time()
            spec = self._proxy.spec.direction(self._dir)
            step = len(data)
            if spec.bandwidth_mbit > 0:
                step = max(1460, int(spec.bandwidth_mbit * 1e6 / 8 * SEGMENT_S))
            tx = self._proxy.transmitter(self._dir)
            for i in range(0, len(data), step):
                piece = data[i : i + step]
                sent = tx.send(len(piece), now, spec.bandwidth_mbit)
                extra = self._rng.uniform(0.0, 2 * spec.jitter_ms) if spec.jitter_ms else 0.0
                release = max(sent + (spec.latency_ms + extra) / 1e3, self._last_release)
                self._last_release = release
                self._queued += len(piece)
                self._queue.put_nowait((release, piece))

    async def _write(self) -> None:
        while True:
            item = await self._queue.get()
            if item is None:  # the sender closed its side: pass the half-close on
                if self._dst.can_write_eof():
                    self._dst.write_eof()
                return
            release, data = item
            await self._proxy.wait_release(release, self._dir)
            self._dst.write(data)
            await self._dst.drain()
            self._queued -= len(data)
            self._space.set()
            self._proxy.count(self._dir, len(data))


class Connection:
    """One accepted client and its upstream, joined by an uplink and a downlink pipe."""

    def __init__(
        self, proxy: LinkProxy, cid: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.proxy, self.cid, self.reader, self.writer = proxy, cid, reader, writer
        self.upstream: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []
        seed = proxy.config.seed
        # one stream per connection and use, so a run repeats whatever the task interleaving
        self.rngs = {n: random.Random(f"{seed}:{cid}:{n}") for n in ("uplink", "downlink", "reset")}
        self.reset_reason: str | None = None

    async def run(self) -> None:
        cfg = self.proxy.config
        host, port = parse_hostport(cfg.upstream)
        try:
            up_reader, self.upstream = await asyncio.wait_for(
                asyncio.open_connection(host, port), cfg.connect_timeout_s
            )
        except (OSError, asyncio.TimeoutError) as exc:
            self.proxy.counters_.upstream_failures += 1
            log_event(
                logger,
                "link.upstream_failed",
                logging.WARNING,
                conn=self.cid,
                upstream=cfg.upstream,
                error=repr(exc),
            )
            abort(self.writer, rst=True)
            return
        up = Pipe(self.proxy, "uplink", self.reader, self.upstream, self.rngs["uplink"])
        down = Pipe(self.proxy, "downlink", up_reader, self.writer, self.rngs["downlink"])
        self.tasks = up.tasks() + down.tasks()
        chaos = asyncio.create_task(self._chaos())
        try:
            await asyncio.wait(self.tasks, return_when=asyncio.FIRST_EXCEPTION)
            failed = [t for t in self.tasks if t.done() and not t.cancelled() and t.exception()]
            if failed and self.reset_reason is None:  # one side died: the other sees it die too
                self.reset(f"peer error: {failed[0].exception()!r}", count=False)
        finally:
            chaos.cancel()
            self.close()

    async def _chaos(self) -> None:
        """Reset lottery: each direction's rate is per second of connection life (Poisson)."""
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(RESET_TICK_S)
            now = loop.time()
            dt, last = now - last, now
            spec = self.proxy.spec
            for name in ("uplink", "downlink"):
                rate = spec.direction(name).resets_per_s
                if rate > 0 and self.rngs["reset"].random() < -math.expm1(-rate * dt):
                    self.reset(f"{name} loss")
                    return

    def reset(self, reason: str, count: bool = True) -> None:
        """Abort both sides with RST, as a dying path or middlebox does."""
        if self.reset_reason is not None:
            return
        self.reset_reason = reason
        if count:
            self.proxy.counters_.resets += 1
        log_event(logger, "link.reset", conn=self.cid, reason=reason)
        for w in (self.writer, self.upstream):
            if w is not None:
                abort(w, rst=True)
        for t in self.tasks:
            t.cancel()

    def close(self) -> None:
        """Close both sides (FIN, or nothing new if already aborted) and stop the pipes."""
        for t in self.tasks:
            t.cancel()
        for w in (self.writer, self.upstream):
            if w is not None and not w.transport.is_closing():
                w.close()
