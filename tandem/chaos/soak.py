"""Load: N concurrent verification sessions against one cloud, for minutes, from a process of
its own; the parent samples the cloud's RSS from /proc.

    python -m tandem.chaos.soak ADDRESS --sessions 64 --seconds 600

Each client holds its own connection (so the cloud counts it as its own client) and runs one
session after another on one stream: open over a task question, verify rounds of random drafts,
close. It prints one JSON line: rounds, the round-trip latency percentiles (ms) and the errors by
status. A failed stream is counted and replaced; RESOURCE_EXHAUSTED is the only refusal the cloud
may give (beyond its capacity).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from node_runtime.serving import aio_channel
from tandem.loadgen import _random_rounds
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


async def _client(address: str, i: int, k: int, stop_at: float, out: dict[str, Any]) -> None:
    rounds = _random_rounds(i)
    n = 0
    async with aio_channel(address, options=OWN_CONNECTION) as ch:
        stub = pb_grpc.CloudStub(ch)
        while time.monotonic() < stop_at:
            call = stub.Speculate(timeout=max(1.0, stop_at - time.monotonic()) + 30)
            try:
                while time.monotonic() < stop_at:
                    prompt, cont = next(rounds)
                    n += 1
                    await _session(call, f"soak-{os.getpid()}-{i}-{n}", prompt, cont, k, out)
                await call.done_writing()
            except grpc.aio.AioRpcError as exc:
                out["errors"][exc.code().name] += 1
                await asyncio.sleep(0.2)


async def _session(
    call: Any, sid: str, prompt: list[int], cont: list[int], k: int, out: dict[str, Any]
) -> None:
    await call.write(pb.SpecRequest(open=pb.OpenSession(session_id=sid, prompt=prompt)))
    await call.read()
    pos, rid = len(prompt), 0
    while pos - len(prompt) + k + 1 <= len(cont):
        rid += 1
        draft = cont[pos - len(prompt) : pos - len(prompt) + k]
        msg = pb.VerifyRequest(session_id=sid, round_id=rid, base_position=pos, draft=draft)
        t0 = time.perf_counter()
        await call.write(pb.SpecRequest(verify=msg))
        reply = await call.read()
        if reply is grpc.aio.EOF:
            raise grpc.aio.AioRpcError(grpc.StatusCode.UNKNOWN, None, None, "stream ended")
        out["ms"].append((time.perf_counter() - t0) * 1e3)
        pos = reply.verdict.position
    await call.write(pb.SpecRequest(close=pb.CloseSession(session_id=sid)))
    await call.read()


def percentile(values: list[float], q: float) -> float | None:
    """The q-quantile (nearest rank) of ``values``, None when empty."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def run(address: str, sessions: int, seconds: float, k: int = 4) -> dict[str, Any]:
    """``sessions`` clients for ``seconds``; the summary line."""
    out: dict[str, Any] = {"ms": [], "errors": Counter()}
    stop_at = time.monotonic() + seconds
    await asyncio.gather(*(_client(address, i, k, stop_at, out) for i in range(sessions)))
    ms = out["ms"]
    return {
        "sessions": sessions,
        "seconds": seconds,
        "rounds": len(ms),
        "p50_ms": percentile(ms, 0.50),
        "p99_ms": percentile(ms, 0.99),
        "errors": dict(out["errors"]),
    }


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` in MB (VmRSS from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for process {pid}")


def slope_mb_per_h(samples: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MB) samples, in MB per hour."""
    if len(samples) < 2:
        return None
    n = len(samples)
    mt = sum(t for t, _ in samples) / n
    mm = sum(m for _, m in samples) / n
    var = sum((t - mt) ** 2 for t, _ in samples)
    if var == 0:
        return None
    return 3600.0 * sum((t - mt) * (m - mm) for t, m in samples) / var


def soak(
    address: str,
    cloud_pid: int,
    sessions: int,
    seconds: float,
    sample_s: float = 5.0,
    on_sample: Callable[[float], None] | None = None,
) -> dict[str, Any]:
    """Run the clients in their own process while sampling the cloud's RSS; the summary with
    the RSS samples and their growth (slope over the samples after the first fifth: warm-up)."""
    cmd = [sys.executable, "-m", "tandem.chaos.soak", address]
    cmd += ["--sessions", str(sessions), "--seconds", str(seconds)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    samples: list[tuple[float, float]] = []
    while proc.poll() is None:
        samples.append((time.monotonic() - t0, rss_mb(cloud_pid)))
        if on_sample is not None:
            on_sample(samples[-1][0])
        time.sleep(min(sample_s, max(0.1, seconds + 1 - (time.monotonic() - t0))))
        if time.monotonic() - t0 > seconds + 120:
            proc.kill()
    stdout, _ = proc.communicate()
    lines = stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"soak clients exited with {proc.returncode}")
    summary = json.loads(lines[-1])
    steady = samples[len(samples) // 5 :]
    summary.update(
        rss_samples=[[round(t, 1), round(m, 2)] for t, m in samples],
        rss_start_mb=samples[0][1] if samples else None,
        rss_end_mb=samples[-1][1] if samples else None,
        rss_growth_mb_per_h=slope_mb_per_h(steady),
    )
    return summary


def main() -> int:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("address")
    p.add_argument("--sessions", type=int, default=64)
    p.add_argument("--seconds", type=float, default=600.0)
    p.add_argument("--k", type=int, default=4)
    a = p.parse_args()
    print(json.dumps(asyncio.run(run(a.address, a.sessions, a.seconds, a.k))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
