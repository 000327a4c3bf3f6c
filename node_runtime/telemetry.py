"""The telemetry plane: lossy, latest-value node samples over ZeroMQ PUB/SUB and msgpack.

The samples and their strict, bounded wire form are in ``tandem_wire.telemetry_codec``.

No slow-joiner blind spot: the publisher's socket is an XPUB, which hands every subscription to
the application, and the publisher answers each one with a fresh sample at once. A subscriber that
joins late, reconnects after a blip or meets a restarted publisher has current state within
milliseconds, and ``NodeInfo.telemetry_address`` stays the one endpoint a node advertises (no
second request socket, so no request to time out). PUB cannot address one peer, so the welcome
sample reaches every subscriber; it is simply one more in-sequence sample for them.

Both ends are asyncio tasks (zmq.asyncio), not threads: nodes and the coordinator run grpc.aio
loops, and a sample callback that runs on that loop reads the node's state without locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import zmq
import zmq.asyncio

from node_runtime import curve
from node_runtime.security import SecurityConfig
from node_runtime.security import default as default_security
from node_runtime.serving import log_event
from tandem_wire.telemetry_codec import (  # re-exported: the telemetry API is one module to users
    MAX_FRAME_BYTES,
    ROLES,
    TOPIC,
    AcceptanceStats,
    Pair,
    Reading,
    Sample,
    TelemetryDecodeError,
    _fail,
    decode_sample,
    encode_sample,
)

# The transport's own names, so that users of the telemetry plane never import zmq themselves.
Context = zmq.asyncio.Context
TransportError = zmq.ZMQError

__all__ = [
    "MAX_FRAME_BYTES",
    "Context",
    "TransportError",
    "ROLES",
    "TOPIC",
    "AcceptanceStats",
    "Latest",
    "Pair",
    "PublisherConfig",
    "Reading",
    "Sample",
    "SubscriberConfig",
    "TelemetryDecodeError",
    "TelemetryPublisher",
    "TelemetrySubscriber",
    "decode_sample",
    "encode_sample",
]

log = logging.getLogger("node_runtime.telemetry")


async def _close(task: asyncio.Task[None] | None, sock: zmq.asyncio.Socket | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if sock is not None:
        sock.close()


def _is_our_subscription(message: bytes) -> bool:
    # XPUB delivers b"\x01" + prefix for a subscribe, b"\x00" + prefix for an unsubscribe.
    return message[:1] == b"\x01" and TOPIC.startswith(message[1:])


@dataclass(frozen=True)
class PublisherConfig:
    """How a node publishes telemetry."""

    # A sample at least this often: a silent node is then visibly stale within one period.
    period_s: float = 1.0
    # At most one welcome sample per this interval, so a subscription flood is no publish flood.
    welcome_interval_s: float = 0.02
    # Samples queued per subscriber before zmq drops: latest-value data, so losing old ones is fine.
    send_hwm: int = 8
    # Largest payload sent; equal to the subscribers' limit so nothing sent is rejected for size.
    max_frame_bytes: int = MAX_FRAME_BYTES

    def __post_init__(self) -> None:
        if not self.period_s > 0 or self.welcome_interval_s < 0:
            raise ValueError("period_s must be > 0 and welcome_interval_s >= 0")
        if self.send_hwm < 1 or self.max_frame_bytes < 1:
            raise ValueError("send_hwm and max_frame_bytes must be >= 1")


SampleFn = Callable[[], Reading]  # cheap and synchronous: it runs on the event loop per sample


class TelemetryPublisher:
    """Publishes a node's samples every ``period_s``, on demand, and to every new subscriber.

    ``bind=True`` binds ``endpoint`` (port 0 or ``*`` picks a free one; ``self.endpoint`` is the
    real one after ``start``); ``bind=False`` connects to a subscriber that binds. Advertise an
    address peers can reach: binding ``0.0.0.0`` reports ``tcp://0.0.0.0:port``.
    """

    def __init__(
        self,
        node_id: str,
        role: str,
        sample_fn: SampleFn = Reading,
        *,
        endpoint: str = "tcp://127.0.0.1:0",
        bind: bool = True,
        config: PublisherConfig | None = None,
        context: zmq.asyncio.Context | None = None,
        security: SecurityConfig | None = None,
    ) -> None:
        encode_sample(Sample(node_id, role, "check", 0, 0.0, 0.0))  # bad id or role fails here
        # Unless plaintext: CURVE, sending only to the holder of the subscriber's key.
        self.security = security or default_security()
        self.node_id, self.role, self.endpoint = node_id, role, endpoint
        self.epoch = uuid.uuid4().hex[:16]
        self.config = config or PublisherConfig()
        self.latest: Sample | None = None
        self._sample_fn, self._bind = sample_fn, bind
        self._context = context or zmq.asyncio.Context.instance()
        self._sock: zmq.asyncio.Socket | None = None
        self._task: asyncio.Task[None] | None = None
        self._next_seq = 0
        self._counts = {"published": 0, "welcomes": 0, "errors": 0}

    async def start(self) -> str:
        """Open the socket, publish the first sample at once; returns the real endpoint."""
        sock = self._context.socket(zmq.XPUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, self.config.send_hwm)
        sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscription, not only a topic's first
        if self.security.secure:
            curve.client_socket(sock, self.security, self.node_id)
        try:
            if self._bind:
                sock.bind(self.endpoint)
                self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            else:
                sock.connect(self.endpoint)
        except zmq.ZMQError:
            sock.close()
            raise
        self._sock = sock
        self._task = asyncio.create_task(self._run(), name=f"telemetry-pub-{self.node_id}")
        return self.endpoint

    async def stop(self) -> None:
        """Stop publishing and close the socket; pending samples are dropped (linger 0)."""
        await _close(self._task, self._sock)
        self._task = self._sock = None

    async def publish(self, reading: Reading | None = None, *, seq: int | None = None) -> Sample:
        """Send one sample now (``sample_fn()`` when ``reading`` is None) and return it.

        ``seq`` overrides the sequence number (tests inject gaps); later samples continue from it.
        Raises ``ValueError`` for a reading the schema rejects, ``RuntimeError`` before ``start``.
        """
        if self._sock is None:
            raise RuntimeError("publisher not started")
        seq = self._next_seq if seq is None else seq
        reading = reading if reading is not None else self._sample_fn()
        sample = Sample(
            self.node_id, self.role, self.epoch, seq, time.time(), time.monotonic(), reading
        )
        payload = encode_sample(sample, self.config.max_frame_bytes)
        self._next_seq = seq + 1  # before the await, so concurrent publishes never share a seq
        # NOBLOCK: at the high-water mark a PUB socket drops the sample rather than wait.
        await self._sock.send_multipart([TOPIC, payload], flags=zmq.NOBLOCK)
        self.latest = sample
        self._counts["published"] += 1
        return sample

    def metrics(self) -> dict[str, float]:
        """Samples published, welcome samples among them, and failed periodic samples."""
        return {f"telemetry_{name}_total": float(n) for name, n in self._counts.items()}

    async def _run(self) -> None:
        assert self._sock is not None
        period, clock = self.config.period_s, time.monotonic
        next_tick = clock()  # the first sample goes out at once, not a period after start
        welcome_due: float | None = None
        last_welcome = -math.inf
        while True:
            due = next_tick if welcome_due is None else min(next_tick, welcome_due)
            wait_ms = max(0, math.ceil((due - clock()) * 1000))
            if await self._sock.poll(wait_ms, zmq.POLLIN):
                if await self._drain_subscriptions() and welcome_due is None:
                    welcome_due = max(clock(), last_welcome + self.config.welcome_interval_s)
                continue
            now = clock()
            if now < due:
                continue
            welcome = welcome_due is not None and now >= welcome_due
            try:
                await self.publish()
            except Exception as err:  # a bad reading must not end telemetry for good
                self._counts["errors"] += 1
                log_event(log, "telemetry_sample_failed", logging.WARNING, error=repr(err))
            welcome_due = None  # any sample after a subscription reaches that subscriber
            if welcome:
                last_welcome = now
                self._counts["welcomes"] += 1
            if now >= next_tick:
                next_tick += period  # fixed cadence: no drift below one sample per period
                if next_tick <= now:  # fell behind (loop stalled): restart the cadence
                    next_tick = now + period

    async def _drain_subscriptions(self) -> bool:
        assert self._sock is not None
        wanted = False
        for _ in range(1000):  # bounded, so a flood cannot starve the publishing
            try:
                message = await self._sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            wanted = wanted or _is_our_subscription(message)
        return wanted


@dataclass(frozen=True)
class SubscriberConfig:
    """How a subscriber receives telemetry."""

    # Larger payloads are counted as malformed without being decoded.
    max_frame_bytes: int = MAX_FRAME_BYTES
    # zmq disconnects a peer sending a bigger frame before buffering it: the memory bound.
    hard_max_frame_bytes: int = 1024 * 1024
    # Messages buffered before zmq drops: the data is latest-value, dropping is fine.
    rcv_hwm: int = 1000
    # Node ids tracked at most; samples from more are dropped and counted, memory stays bounded.
    max_publishers: int = 4096
    # Retry a lost or restarted publisher this soon, so its welcome sample arrives quickly.
    reconnect_ivl_ms: int = 100
    # Back off up to this for a publisher that stays down.
    reconnect_ivl_max_ms: int = 2000
    # ZMTP heartbeats: a silently dead publisher's connection is dropped and retried.
    heartbeat_ivl_ms: int = 1000
    # No heartbeat answer within this closes the connection.
    heartbeat_timeout_ms: int = 3000

    def __post_init__(self) -> None:
        if not 0 < self.max_frame_bytes <= self.hard_max_frame_bytes:
            raise ValueError("need 0 < max_frame_bytes <= hard_max_frame_bytes")
        if min(self.rcv_hwm, self.max_publishers, self.reconnect_ivl_ms) < 1:
            raise ValueError("rcv_hwm, max_publishers and reconnect_ivl_ms must be >= 1")


@dataclass(frozen=True)
class Latest:
    """A publisher's latest sample as one subscriber saw it, with that publisher's counters."""

    sample: Sample
    received_at: float  # subscriber clock
    samples: int  # accepted samples from this node id
    gaps: int  # sequence numbers missed within an epoch
    restarts: int  # epoch changes seen (publisher restarts)
    duplicates: int  # samples dropped as not newer than the latest (same or older seq)


def _normalize(endpoint: str) -> str:
    return endpoint if "://" in endpoint else f"tcp://{endpoint}"


class TelemetrySubscriber:
    """One SUB socket on many publishers: latest sample per node, gaps, restarts, malformed.

    ``connect``/``disconnect`` work at any time after ``start``; ``host:port`` means ``tcp://``.
    A frame is attributed by its node_id only (one socket cannot tell which peer sent it).
    """

    def __init__(
        self,
        config: SubscriberConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        context: zmq.asyncio.Context | None = None,
        security: SecurityConfig | None = None,
    ) -> None:
        self.config = config or SubscriberConfig()
        # Unless plaintext: a CURVE server admitting only allowlisted node keys (ZAP).
        self.security = security or default_security()
        self._zap: curve.ZapHandler | None = None
        self._clock = clock
        self._context = context or zmq.asyncio.Context.instance()
        self._sock: zmq.asyncio.Socket | None = None
        self._task: asyncio.Task[None] | None = None
        self._endpoints: set[str] = set()
        self._latest: dict[str, Latest] = {}
        self._updated = asyncio.Event()
        self._counts: dict[str, int] = dict.fromkeys(
            (
                "samples",
                "gaps",
                "restarts",
                "duplicates",
                "untracked",
                "malformed",
                "impersonations",
            ),
            0,
        )

    async def start(self) -> None:
        """Open the socket and start receiving."""
        cfg, sock = self.config, self._context.socket(zmq.SUB)
        for option, value in (
            (zmq.LINGER, 0),
            (zmq.RCVHWM, cfg.rcv_hwm),
            (zmq.MAXMSGSIZE, cfg.hard_max_frame_bytes),
            (zmq.RECONNECT_IVL, cfg.reconnect_ivl_ms),
            (zmq.RECONNECT_IVL_MAX, cfg.reconnect_ivl_max_ms),
            (zmq.HEARTBEAT_IVL, cfg.heartbeat_ivl_ms),
            (zmq.HEARTBEAT_TIMEOUT, cfg.heartbeat_timeout_ms),
        ):
            sock.setsockopt(option, value)
        sock.setsockopt(zmq.SUBSCRIBE, TOPIC)
        if self.security.secure:
            curve.server_socket(sock, self.security)
            self._zap = await curve.ZapHandler.acquire(self._context, self.security)
        self._sock = sock
        self._task = asyncio.create_task(self._run(), name="telemetry-sub")

    async def stop(self) -> None:
        """Stop receiving and close the socket; the latest samples stay readable."""
        await _close(self._task, self._sock)
        self._task = self._sock = None
        self._endpoints.clear()
        if self._zap is not None:
            await self._zap.release()
            self._zap = None

    def connect(self, endpoint: str) -> None:
        """Follow the publisher at ``endpoint`` (no-op when already followed); zmq retries in the
        background while it is down. Raises ``zmq.ZMQError`` for an invalid endpoint."""
        endpoint = _normalize(endpoint)
        if endpoint not in self._endpoints:
            self._socket().connect(endpoint)
            self._endpoints.add(endpoint)

    def disconnect(self, endpoint: str) -> None:
        """Stop following ``endpoint``; its node's latest sample stays until ``forget``."""
        endpoint = _normalize(endpoint)
        if endpoint in self._endpoints:
            self._endpoints.discard(endpoint)
            with contextlib.suppress(zmq.ZMQError):  # already gone on zmq's side
                self._socket().disconnect(endpoint)

    def bind(self, endpoint: str) -> str:
        """Accept publishers that connect (``bind=False`` on their side); returns the endpoint."""
        sock = self._socket()
        sock.bind(_normalize(endpoint))
        return sock.getsockopt_string(zmq.LAST_ENDPOINT)

    @property
    def endpoints(self) -> frozenset[str]:
        """The endpoints followed now."""
        return frozenset(self._endpoints)

    def forget(self, node_id: str) -> bool:
        """Drop a node's state (it left); False when unknown."""
        return self._latest.pop(node_id, None) is not None

    def latest(self, node_id: str) -> Latest | None:
        """The node's latest sample with its counters, if any arrived."""
        return self._latest.get(node_id)

    def snapshot(self) -> dict[str, Latest]:
        """Every tracked node's latest sample, by node id (a copy)."""
        return dict(self._latest)

    def stats(self) -> dict[str, float]:
        """Totals over all publishers: samples, gaps, restarts, duplicates, malformed (also by
        reason), samples dropped for ``max_publishers``; and publishers and endpoints now."""
        out = {f"{name}_total": float(n) for name, n in self._counts.items()}
        out.update(publishers=float(len(self._latest)), endpoints=float(len(self._endpoints)))
        return out

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Wait until ``predicate()`` holds, re-checked after every sample; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._updated.wait(), remaining)
        return True

    def handle(self, frames: Sequence[bytes], sender: str | None = None) -> Sample | None:
        """Take one received message; the sample when accepted, None when dropped (counted).

        ``sender`` is the publisher's node id as CURVE/ZAP authenticated it (None: plaintext); a
        sample in another node's name is dropped and counted as an impersonation."""
        try:
            if len(frames) != 2 or frames[0] != TOPIC:
                _fail("frames", f"expected [{TOPIC!r}, payload], got {len(frames)} frames")
            sample = decode_sample(frames[1], self.config.max_frame_bytes)
        except TelemetryDecodeError as err:
            self._counts["malformed"] += 1
            key = f"malformed_{err.reason}"
            self._counts[key] = self._counts.get(key, 0) + 1
            log_event(log, "telemetry_malformed", logging.DEBUG, error=str(err)[:200])
            return None
        if sender is not None and sample.node_id != sender:
            self._counts["impersonations"] += 1
            log_event(
                log,
                "telemetry_impersonation",
                logging.WARNING,
                sender=sender,
                claimed=sample.node_id,
            )
            return None
        old = self._latest.get(sample.node_id)
        gaps = restarts = 0
        if old is None:
            if len(self._latest) >= self.config.max_publishers:
                self._counts["untracked"] += 1
                return None
            old = Latest(sample, 0.0, 0, 0, 0, 0)
        elif sample.epoch != old.sample.epoch:
            restarts = 1  # a new publisher process: its seq starts over, nothing was missed
        elif sample.seq <= old.sample.seq:
            self._counts["duplicates"] += 1
            self._latest[sample.node_id] = replace(old, duplicates=old.duplicates + 1)
            return None
        else:
            gaps = sample.seq - old.sample.seq - 1
        self._latest[sample.node_id] = Latest(
            sample=sample,
            received_at=self._clock(),
            samples=old.samples + 1,
            gaps=old.gaps + gaps,
            restarts=old.restarts + restarts,
            duplicates=old.duplicates,
        )
        self._counts["samples"] += 1
        self._counts["gaps"] += gaps
        self._counts["restarts"] += restarts
        self._updated.set()  # wake every waiter, then arm a fresh event for the next sample
        self._updated = asyncio.Event()
        return sample

    def _socket(self) -> zmq.asyncio.Socket:
        if self._sock is None:
            raise RuntimeError("subscriber not started")
        return self._sock

    async def _run(self) -> None:
        sock = self._socket()
        secure = self.security.secure
        while True:
            if secure:  # frames carry the ZAP-authenticated node id of their publisher
                parts = await sock.recv_multipart(copy=False)
                frames, sender = [p.bytes for p in parts], parts[-1].get("User-Id")
            else:
                frames, sender = await sock.recv_multipart(), None
            try:
                self.handle(frames, sender)
            except Exception:  # a bug in handling one frame must not stop the intake
                log.exception("telemetry_handle_failed")
