"""The life of a node process, shared by edge and cloud: publish, register, serve, stop."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from node_runtime.agent import NodeAgent
from node_runtime.serving import install_stop_signals, log_event, write_ready
from node_runtime.telemetry import Reading, TelemetryPublisher
from tandem_wire.v1 import tandem_pb2 as pb

log = logging.getLogger("node_runtime.lifecycle")


class RateWindow:
    """Per-second rates of growing counters since the previous sample (not since start).

    A window belongs to one consumer: each sample restarts the window, so two consumers sharing
    one would each measure only the time since the other's last sample.
    """

    def __init__(
        self, min_window_s: float = 0.05, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.min_window_s = min_window_s  # samples closer than this keep the previous rate
        self._clock = clock  # seconds, monotonic
        self._last: dict[str, tuple[float, float]] = {}
        self._rate: dict[str, float] = {}

    def rate(self, name: str, value: float) -> float:
        """How fast ``value`` grew per second since the last call for ``name``."""
        now = self._clock()
        t0, v0 = self._last.setdefault(name, (now, value))
        if now - t0 >= self.min_window_s:
            self._rate[name] = max(0.0, (value - v0) / (now - t0))
            self._last[name] = (now, value)
        return self._rate.get(name, 0.0)

    def busy_fraction(self, name: str, busy_s: float) -> float:
        """The share of the window that ``busy_s`` (seconds spent working) grew by, in [0, 1].

        Work is often counted when it ends, so a long call finishing inside a short window
        would read as more than the whole window; a fraction is never above 1.
        """
        return min(1.0, self.rate(name, busy_s))


async def run_node(
    info: pb.NodeInfo,
    role: str,
    coordinator: str,
    load_fn: Callable[[], pb.NodeLoad],
    sample_fn: Callable[[], Reading],
    stop_node: Callable[[], Awaitable[None]],
    ready_file: Path | None = None,
    on_stop: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Publish telemetry, register (when a coordinator is given), run until SIGTERM/SIGINT.

    The telemetry endpoint goes into ``info`` before registering, so the coordinator follows the
    node from its first heartbeat on. On a signal, ``on_stop`` runs first (a node reports
    NOT_SERVING and starts draining there), then the node deregisters and ``stop_node`` runs.
    """
    publisher = TelemetryPublisher(info.node_id, role, sample_fn)
    info.telemetry_address = await publisher.start()
    agent = None
    if coordinator:
        agent = NodeAgent(coordinator, info, load_fn)
        await agent.start()
    if ready_file is not None:
        write_ready(ready_file, info.address)
    log_event(log, "node_running", node_id=info.node_id, telemetry=info.telemetry_address)
    stop = asyncio.Event()
    install_stop_signals(stop)
    await stop.wait()
    log_event(log, "node_stopping", node_id=info.node_id)
    if on_stop is not None:
        await on_stop()
    if agent is not None:
        await agent.stop()
    await publisher.stop()
    await stop_node()
    log_event(log, "node_stopped", node_id=info.node_id)
