"""What secure-by-default costs: the same cloud node over mTLS + token and over plaintext.

Two cloud nodes with the bundled target run in one process on 127.0.0.1, one secured as by
default, one in explicit plaintext. In turns (tls, plaintext, tls, ...), each repeat measures

- ``connect_ms``: a new channel up to the reply of its first call (TCP, TLS handshake, token);
- ``unary_ms``: one ``Cloud.Metrics`` call on a warm channel;
- ``verify_round_ms``: one verify round (k=2 drafted tokens) on an open ``Cloud.Speculate``
  stream, the exchange speculation repeats per round;

each a median over many calls, then the median over repeats with its range, and the per-repeat
ratio tls / plaintext. Real loopback and real model calls: nothing here is emulated.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from node_runtime import security
from node_runtime.serving import aio_channel
from tandem.repeats import MIN_REPEATS, Spread, paired_ratios
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

FIGURES = ("connect_ms", "unary_ms", "verify_round_ms")
PLAIN = security.SecurityConfig(mode="plaintext")


async def _timed(call: Callable[[], Awaitable[Any]], n: int) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        await call()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


async def _connect(address: str, config: security.SecurityConfig) -> None:
    async with aio_channel(address, security=config) as ch:
        await pb_grpc.CloudStub(ch).Metrics(pb.MetricsRequest(), timeout=10)


async def _rounds(stub: pb_grpc.CloudStub, sessions: int, rounds: int) -> list[float]:
    times = []
    for s in range(sessions):
        call = stub.Speculate(timeout=60)
        sid = f"overhead-{time.monotonic_ns()}-{s}"
        await call.write(pb.SpecRequest(open=pb.OpenSession(session_id=sid, prompt=[1, 3, 5])))
        base = (await call.read()).opened.position or 3
        for r in range(rounds):
            verify = pb.VerifyRequest(session_id=sid, round_id=r + 1, base_position=base)
            verify.draft.extend([5, 6])
            start = time.perf_counter()
            await call.write(pb.SpecRequest(verify=verify))
            reply = await call.read()
            times.append((time.perf_counter() - start) * 1000)
            base = reply.verdict.position
        await call.done_writing()
        while await call.read() != grpc.aio.EOF:  # the session's close
            pass
    return times


async def _measure(address: str, config: security.SecurityConfig, quick: bool) -> dict[str, float]:
    n = 10 if quick else 40
    out = {"connect_ms": await _timed(lambda: _connect(address, config), n // 2)}
    async with aio_channel(address, security=config) as ch:
        stub = pb_grpc.CloudStub(ch)
        await stub.Metrics(pb.MetricsRequest(), timeout=10)  # warm
        out["unary_ms"] = await _timed(lambda: stub.Metrics(pb.MetricsRequest(), timeout=10), n)
        out["verify_round_ms"] = statistics.median(await _rounds(stub, 2 if quick else 4, 6))
    return out


async def run_overhead(repeats: int = 5, quick: bool = False) -> dict[str, Any]:
    """Measure both configurations in turns; the report's figures are medians over repeats."""
    import tempfile

    from cloud_node.node import start_cloud
    from models.task import WordTokenizer
    from models.torch_backend import load_torch

    if repeats < MIN_REPEATS:
        raise ValueError(f"repeats: at least {MIN_REPEATS}")
    lm = load_torch("target")
    previous = security.default()
    tls = security.SecurityConfig(home=Path(tempfile.mkdtemp(prefix="tandem-overhead-")))
    nodes = {}
    try:
        for name, config in (("tls", tls), ("plaintext", PLAIN)):
            security.set_default(config)  # the node's server is made with it
            nodes[name] = (await start_cloud(lm, WordTokenizer().eos_id), config)
        security.set_default(previous)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in nodes}
        for rep in range(repeats):
            for name, (node, config) in nodes.items():
                print(f"repeat {rep + 1}/{repeats}: {name}", flush=True)
                runs[name].append(await _measure(node.address, config, quick))
    finally:
        security.set_default(previous)
        for node, _ in nodes.values():
            await node.stop()
    report: dict[str, Any] = {"emulated": False, "repeats": repeats, "quick": quick}
    for name, rows in runs.items():
        report[name] = {f: Spread.of([r[f] for r in rows]).as_dict() for f in FIGURES}
    report["ratio_tls_to_plaintext"] = {
        f: Spread.of(
            paired_ratios([r[f] for r in runs["tls"]], [r[f] for r in runs["plaintext"]])
        ).as_dict()
        for f in FIGURES
    }
    return report


def print_overhead(report: dict[str, Any]) -> None:
    """The table: per figure, each configuration's median [range] and the ratio."""
    from tandem.report import print_table, spread_text

    rows = {}
    for f in FIGURES:
        tls, plain = report["tls"][f], report["plaintext"][f]
        ratio = report["ratio_tls_to_plaintext"][f]
        rows[f] = {
            "tls median": tls["median"],
            "tls range": spread_text(tls),
            "plaintext median": plain["median"],
            "plaintext range": spread_text(plain),
            "ratio tls/plain": ratio["median"],
            "ratio range": spread_text(ratio),
        }
    print_table("figure (real loopback, not emulated)", rows, list(next(iter(rows.values()))))


def plot_overhead(report: dict[str, Any], path: Path) -> None:
    """Medians with their ranges, tls next to plaintext, one panel per figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tandem.report import median_and_error

    fig, axes = plt.subplots(1, len(FIGURES), figsize=(4 * len(FIGURES), 3.4))
    for ax, f in zip(axes, FIGURES, strict=True):
        med, err = median_and_error([report["tls"][f], report["plaintext"][f]])
        ax.bar(["tls", "plaintext"], med, yerr=err, color=["#4C72B0", "#DD8452"], capsize=4)
        ratio = report["ratio_tls_to_plaintext"][f]["median"]
        ax.set_title(f"{f} (tls/plain {ratio:.2f})")
    fig.suptitle(f"mTLS + token vs plaintext, {report['repeats']} repeats (not emulated)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(json_path: str, plot_path: str, repeats: int, quick: bool) -> int:
    """Run, print, write the JSON and the plot."""
    report = asyncio.run(run_overhead(repeats, quick))
    print_overhead(report)
    Path(json_path).parent.mkdir(parents=True, exist_ok=True)
    Path(json_path).write_text(json.dumps(report, indent=2))
    plot_overhead(report, Path(plot_path))
    print(f"wrote {json_path} and {plot_path}")
    return 0
