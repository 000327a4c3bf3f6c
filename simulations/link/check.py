"""Measure what a :class:`LinkProxy` delivers against what its spec asks for.

A loopback probe server sits behind the proxy. RTT is the median of small ping-pongs; each
direction's bandwidth is a bulk transfer sized to last ``transfer_s`` at the asked rate, timed
from request to completion minus the measured RTT (what is left is serialization time).
"""

from __future__ import annotations

import asyncio
import math
import statistics
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from simulations.link.proxy import LinkProxy, ProxyConfig
from simulations.link.spec import DirectionSpec, LinkSpec

# The built-in check link: long enough delays that loop overhead is noise, rates that a
# loaded 2-core machine sustains, transfers that finish in about a second.
DEFAULT_CHECK_SPEC = LinkSpec.symmetric(latency_ms=30.0, bandwidth_mbit=8.0)
_BLOCK = 64 * 1024


@dataclass(frozen=True)
class CheckConfig:
    """How hard :func:`check_link` measures."""

    rtt_samples: int = 30  # ping-pongs; the median is compared (after one warm-up)
    rtt_budget_s: float = 3.0  # fewer samples (not under min_rtt_samples) on slow links
    min_rtt_samples: int = 8  # floor, so a GEO link still gets a meaningful median
    message_bytes: int = 64  # RTT probe size: small, so serialization barely counts
    transfer_s: float = 1.0  # each bulk transfer lasts about this long at the asked rate
    unlimited_bytes: int = 16 * 1024 * 1024  # transfer size when bandwidth is unlimited
    max_transfer_bytes: int = 32 * 1024 * 1024  # cap, so fast links stay fast to check
    timeout_s: float = 60.0  # bound on each measurement
    seed: int = 0  # proxy seed (jitter draws)


@dataclass(frozen=True)
class Measurement:
    """One quantity asked of the link and what came out."""

    name: str  # "rtt_ms", "uplink_mbit" or "downlink_mbit"
    asked: float  # from the spec; inf when unlimited
    measured: float  # what the probes saw

    @property
    def error(self) -> float | None:
        """Relative error |measured - asked| / asked; None when nothing was asked (0 or inf)."""
        if self.asked <= 0 or math.isinf(self.asked):
            return None
        return abs(self.measured - self.asked) / self.asked


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check: asked vs measured for RTT and both bandwidths."""

    label: str  # profile name or "default"
    spec: LinkSpec  # the spec measured (resets switched off)
    measurements: tuple[Measurement, ...]  # rtt_ms, uplink_mbit, downlink_mbit
    elapsed_s: float  # wall time of the whole check
    rtt_samples_ms: tuple[float, ...] = field(default=(), repr=False)  # raw RTTs, for plots

    def within(self, tolerance: float = 0.10) -> bool:
        """True when every quantity that was asked is within ``tolerance`` (relative)."""
        return all(m.error is None or m.error <= tolerance for m in self.measurements)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "label": self.label,
            "spec": self.spec.to_dict(),
            "elapsed_s": self.elapsed_s,
            "within_10pct": self.within(0.10),
            "rtt_samples_ms": list(self.rtt_samples_ms),
            "measurements": [
                {
                    "name": m.name,
                    "asked": None if math.isinf(m.asked) else m.asked,
                    "measured": m.measured,
                    "error": m.error,
                }
                for m in self.measurements
            ],
        }

    def table(self) -> str:
        """A fixed-width table for the terminal."""
        lines = [
            f"link check: {self.label}",
            f"{'quantity':<15}{'asked':>12}{'measured':>12}{'error':>9}",
        ]
        for m in self.measurements:
            asked = "unlimited" if math.isinf(m.asked) else f"{m.asked:.2f}"
            err = "n/a" if m.error is None else f"{100 * m.error:.1f}%"
            lines.append(f"{m.name:<15}{asked:>12}{m.measured:>12.2f}{err:>9}")
        lines.append(f"within 10%: {'yes' if self.within() else 'NO'}  ({self.elapsed_s:.1f} s)")
        return "\n".join(lines)


class ProbeServer:
    """Loopback TCP server the check talks to. The first byte of a connection picks the mode:
    ``E`` echo everything; ``U`` + u64 n: swallow n bytes, answer ``K``; ``D`` + u64 n: send n.
    """

    def __init__(self) -> None:
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.address = ""  # "127.0.0.1:port" once started

    async def __aenter__(self) -> ProbeServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.address = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.wait_for(self._server.wait_closed(), 5.0)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            mode = await reader.readexactly(1)
            if mode == b"E":
                while data := await reader.read(_BLOCK):
                    writer.write(data)
                    await writer.drain()
            elif mode in (b"U", b"D"):
                (n,) = struct.unpack("!Q", await reader.readexactly(8))
                if mode == b"U":
                    await reader.readexactly(n)
                    writer.write(b"K")
                else:
                    block = bytes(_BLOCK)
                    for i in range(0, n, _BLOCK):
                        writer.write(block[: min(_BLOCK, n - i)])
                        await writer.drain()
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client went away: nothing to answer
        finally:
            self._tasks.discard(task)
            writer.close()


async def _open(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, _, port = address.rpartition(":")
    return await asyncio.wait_for(asyncio.open_connection(host, int(port)), 5.0)


async def measure_rtts(address: str, samples: int, message_bytes: int) -> list[float]:
    """Round trips (seconds) of ``message_bytes`` echoed ``samples`` times, after one warm-up."""
    reader, writer = await _open(address)
    try:
        writer.write(b"E")
        msg = bytes(message_bytes)
        out: list[float] = []
        for i in range(samples + 1):
            t0 = time.perf_counter()
            writer.write(msg)
            await writer.drain()
            await reader.readexactly(message_bytes)
            if i:  # the first one also pays for the connection set-up
                out.append(time.perf_counter() - t0)
        return out
    finally:
        writer.close()


async def measure_transfer(address: str, direction: str, nbytes: int) -> float:
    """Seconds from request to completion of an ``nbytes`` upload or download."""
    reader, writer = await _open(address)
    try:
        t0 = time.perf_counter()
        writer.write((b"U" if direction == "uplink" else b"D") + struct.pack("!Q", nbytes))
        if direction == "uplink":
            block = bytes(_BLOCK)
            for i in range(0, nbytes, _BLOCK):
                writer.write(block[: min(_BLOCK, nbytes - i)])
                await writer.drain()
            await reader.readexactly(1)
        else:
            await reader.readexactly(nbytes)
        return time.perf_counter() - t0
    finally:
        writer.close()


def _transfer_bytes(d: DirectionSpec, cfg: CheckConfig) -> int:
    if d.bandwidth_mbit <= 0:
        return cfg.unlimited_bytes
    at_rate = int(d.bandwidth_mbit * 1e6 / 8 * cfg.transfer_s)
    return max(_BLOCK, min(cfg.max_transfer_bytes, at_rate))


async def check_link(
    spec: LinkSpec = DEFAULT_CHECK_SPEC, label: str = "default", config: CheckConfig | None = None
) -> CheckResult:
    """Put a proxy with ``spec`` in front of a probe server and measure it.

    Resets are switched off (a reset would abort the measurement, and they are not a rate one
    can time); a blackholed spec is refused since nothing could be measured.
    """
    cfg = config or CheckConfig()
    if spec.blackholed:
        raise ValueError("cannot measure a blackholed link: nothing crosses it")
    spec = spec.changed({"resets_per_s": 0.0})
    asked_rtt = (
        spec.rtt_ms
        + spec.uplink.serialization_ms(cfg.message_bytes)
        + spec.downlink.serialization_ms(cfg.message_bytes)
    )
    n_rtt = max(
        cfg.min_rtt_samples,
        min(cfg.rtt_samples, int(cfg.rtt_budget_s * 1e3 / max(asked_rtt, 1e-3))),
    )
    start = time.perf_counter()
    async with ProbeServer() as server:
        proxy_cfg = ProxyConfig(upstream=server.address, seed=cfg.seed)
        async with LinkProxy(proxy_cfg, spec) as proxy:
            rtts = await asyncio.wait_for(
                measure_rtts(proxy.address, n_rtt, cfg.message_bytes), cfg.timeout_s
            )
            rtt = statistics.median(rtts)
            measurements = [Measurement("rtt_ms", asked_rtt, rtt * 1e3)]
            for name in ("uplink", "downlink"):
                d = spec.direction(name)
                n = _transfer_bytes(d, cfg)
                took = await asyncio.wait_for(
                    measure_transfer(proxy.address, name, n), cfg.timeout_s
                )
                # what is left after one round trip is the time the bytes spent serializing
                mbit = n * 8 / max(took - rtt, 1e-6) / 1e6
                asked = d.bandwidth_mbit if d.bandwidth_mbit > 0 else math.inf
                measurements.append(Measurement(f"{name}_mbit", asked, mbit))
    return CheckResult(
        label, spec, tuple(measurements), time.perf_counter() - start, tuple(r * 1e3 for r in rtts)
    )


def run_check(
    spec: LinkSpec = DEFAULT_CHECK_SPEC, label: str = "default", config: CheckConfig | None = None
) -> CheckResult:
    """:func:`check_link` for synchronous callers (runs its own event loop)."""
    return asyncio.run(check_link(spec, label, config))
