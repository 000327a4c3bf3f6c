"""``tandem api-bench``: what the HTTP API costs over the gRPC path it wraps.

A local cluster of processes (coordinator with its API, cloud with the bundled target, an edge
with the int8 drafter and its own API) answers the same held-out problems, greedy, in token
speculation, four ways: ``Edge.SolveStream`` over gRPC (the baseline), the edge's
``/v1/chat/completions`` (what an agent on the device calls), the job API over gRPC
(``Coordinator.Submit``, which relays the edge's stream), and the coordinator's front door (HTTP,
then ``Coordinator.Submit``, then the edge). Each configuration runs every problem once per
repeat, repeats interleaved; the figure is the mean wall time of a request in a repeat, reported
as median and range over repeats, and as paired ratios to the baseline. Every configuration must
return the same texts. Not emulated: real processes on this machine's loopback.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from tqdm import tqdm

from models import task
from node_runtime.serving import aio_channel
from tandem.repeats import Spread, interleaved, paired_ratios
from tandem.report import write_json
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

CONFIGS = ("grpc", "edge-http", "job-grpc", "front-door")


@dataclass(frozen=True)
class ApiBenchConfig:
    """One run of the API benchmark."""

    problems: int = 20  # held-out problems per repeat
    repeats: int = 5  # interleaved repeats of every configuration (at least 3)
    out_dir: Path = field(default_factory=lambda: Path("runs/api-bench"))  # logs and the plot


async def _grpc(address: str, questions: list[str]) -> tuple[float, list[str]]:
    async with aio_channel(address) as ch:
        stub = pb_grpc.EdgeStub(ch)
        texts, t0 = [], time.perf_counter()
        for q in questions:
            req = pb.SolveRequest(prompt=q, mode=pb.MODE_TOKEN_SPECULATION)
            events = [e async for e in stub.SolveStream(req, timeout=60)]
            texts.append(events[-1].done.text)
        return (time.perf_counter() - t0) / len(questions), texts


async def _job(address: str, questions: list[str]) -> tuple[float, list[str]]:
    async with aio_channel(address) as ch:
        stub = pb_grpc.CoordinatorStub(ch)
        texts, t0 = [], time.perf_counter()
        for q in questions:
            req = pb.JobRequest(prompt=q, mode=pb.MODE_TOKEN_SPECULATION)
            events = [e async for e in stub.Submit(req, timeout=60)]
            texts.append(events[-1].done.result.text)
        return (time.perf_counter() - t0) / len(questions), texts


async def _http(url: str, questions: list[str]) -> tuple[float, list[str]]:
    async with aiohttp.ClientSession() as session:
        texts, t0 = [], time.perf_counter()
        for q in questions:
            body = {
                "model": "tandem",
                "messages": [{"role": "user", "content": q}],
                "temperature": 0,
                "mode": "speculation",
            }
            async with session.post(f"{url}/chat/completions", json=body) as r:
                reply: dict[str, Any] = await r.json()
                if r.status != 200:
                    raise RuntimeError(f"{r.status}: {reply}")
            texts.append(reply["choices"][0]["message"]["content"])
        return (time.perf_counter() - t0) / len(questions), texts


def _listening(log: Path) -> str:
    from tandem.cli_cluster import _listening as find

    return find(log)


def run_api_bench(cfg: ApiBenchConfig) -> dict[str, Any]:
    """Start the cluster, run the three configurations interleaved, print and write the report."""
    from tandem.cluster import LocalCluster

    if cfg.repeats < 3:
        raise ValueError(f"repeats: at least 3, got {cfg.repeats}")
    questions = [p.question for p in task.generate(cfg.problems, task.HELDOUT_SEED)]
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    with LocalCluster(workdir=cfg.out_dir / "logs") as cluster:
        coord = cluster.start("coordinator", "coordinator", "--api-port", "0")
        cluster.start("cloud", "cloud", "--coordinator", coord.address)
        edge = cluster.start("edge", "edge", "--coordinator", coord.address, "--api-port", "0")
        edge_url = f"http://{_listening(edge.log_path)}/v1"
        front_url = f"http://{_listening(coord.log_path)}/v1"
        time.sleep(2.5)  # both nodes registered (heartbeat 1 s) before the front door is asked
        runs = {
            "grpc": lambda: asyncio.run(_grpc(edge.address, questions)),
            "edge-http": lambda: asyncio.run(_http(edge_url, questions)),
            "job-grpc": lambda: asyncio.run(_job(coord.address, questions)),
            "front-door": lambda: asyncio.run(_http(front_url, questions)),
        }
        for run in runs.values():  # warm-up, not reported: first calls pay connection set-up
            run()
        bar = tqdm(total=cfg.repeats * len(runs), desc="api-bench")
        results = interleaved(runs, cfg.repeats, on_run=lambda *_: bar.update())
        bar.close()
    return _report(cfg, results)


def _report(
    cfg: ApiBenchConfig, results: dict[str, list[tuple[float, list[str]]]]
) -> dict[str, Any]:
    base_texts = results["grpc"][0][1]
    same = all(texts == base_texts for runs in results.values() for _, texts in runs)
    base = [ms for ms, _ in results["grpc"]]
    report: dict[str, Any] = {
        "what": "mean wall time of one request, greedy token speculation, bundled models",
        "problems": cfg.problems,
        "repeats": cfg.repeats,
        "emulated": False,
        "same_texts": same,
        "configs": {},
    }
    print(f"\nAPI cost over the gRPC path ({cfg.problems} problems x {cfg.repeats} repeats)")
    print(f"{'config':<12} {'ms/request':>11} {'range':>17} {'x grpc':>7} {'+ms':>7}")
    for name in CONFIGS:
        secs = [s for s, _ in results[name]]
        ms = Spread.of([s * 1e3 for s in secs])
        ratio = Spread.of(paired_ratios(secs, base))
        extra = statistics.median((s - b) * 1e3 for s, b in zip(secs, base, strict=True))
        report["configs"][name] = {
            "ms_per_request": ms.as_dict(),
            "ratio_to_grpc": ratio.as_dict(),
            "extra_ms": extra,
        }
        print(
            f"{name:<12} {ms.median:>11.1f} {f'{ms.low:.1f}-{ms.high:.1f}':>17} "
            f"{ratio.median:>7.2f} {extra:>7.1f}"
        )
    print(f"same texts in every configuration: {'yes' if same else 'NO'}")
    _plot(report, cfg.out_dir / "api-bench.png")
    return report


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["configs"])
    med = [report["configs"][n]["ms_per_request"]["median"] for n in names]
    low = [
        m - report["configs"][n]["ms_per_request"]["min"] for m, n in zip(med, names, strict=True)
    ]
    high = [
        report["configs"][n]["ms_per_request"]["max"] - m for m, n in zip(med, names, strict=True)
    ]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(names, med, yerr=[low, high], capsize=6, color=["#888", "#4a7", "#a74", "#47a"])
    ax.set_ylabel("ms per request (median, range)")
    ax.set_title(f"HTTP API over gRPC, {report['problems']} problems x {report['repeats']} repeats")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_parser(sub: Any) -> None:
    """``tandem api-bench``."""
    p = sub.add_parser("api-bench", help="what the OpenAI-compatible API costs over gRPC")
    p.add_argument("--problems", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default="", help="write the figures here")
    p.add_argument("--out", default="runs/api-bench", help="folder for the plot and logs")
    p.set_defaults(func=_run)


def _run(args: Any) -> int:
    cfg = ApiBenchConfig(problems=args.problems, repeats=args.repeats, out_dir=Path(args.out))
    report = run_api_bench(cfg)
    write_json(args.json, report)
    return 0 if report["same_texts"] else 1
