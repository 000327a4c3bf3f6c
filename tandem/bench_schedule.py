"""``tandem bench schedule``: the adaptive scheduler against every static policy, one run.

Real processes (coordinator, cloud, edge) under a device pair's profiles (the nodes pad every
model call to the profile's time: ``tandem serve --device``), with the link emulator between edge
and cloud; each cell of the grid sets the link's RTT and the cloud's load, then runs the same
problems under every policy, ``repeats`` times, interleaved so that drift on a noisy machine hits
all of them alike. A last phase kills two of three cloud nodes while requests run and counts the
requests lost.
"""

from __future__ import annotations

import asyncio
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from tqdm import tqdm

from models import task
from node_runtime.serving import aio_channel
from simulations.link.proxy import LinkProxy, ProxyConfig
from simulations.link.spec import LinkSpec
from tandem.cluster import LocalCluster, Proc
from tandem.edge_cloud_grid import DevicePair, emulated_label
from tandem.loadgen import verify_load
from tandem.repeats import MIN_REPEATS, Spread, interleaved
from tandem.report import print_table
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

# (name, mode, k); k 0 lets the node choose
POLICIES: tuple[tuple[str, int, int], ...] = (
    ("adaptive", pb.MODE_UNSPECIFIED, 0),
    ("cloud-only", pb.MODE_CLOUD_ONLY, 0),
    ("spec-k1", pb.MODE_TOKEN_SPECULATION, 1),
    ("spec-k2", pb.MODE_TOKEN_SPECULATION, 2),
    ("spec-k4", pb.MODE_TOKEN_SPECULATION, 4),
    ("spec-k8", pb.MODE_TOKEN_SPECULATION, 8),
)
LOADS = ("idle", "busy")
# Drafting on a Jetson Orin Nano Super for an 8B model on one H100: its crossover with cloud-only
# lies near 20 ms of RTT (bench edge-cloud), so the RTT grid has cells on both sides of it.
DEFAULT_PAIR = DevicePair("orin-nano-super/smollm2-135m-q4", "h100/llama3-8b-bf16")


@dataclass(frozen=True)
class ScheduleBenchConfig:
    """Sizes of one run."""

    quick: bool = False  # fewer RTTs and problems
    out_dir: Path = Path("runs/bench-schedule")  # plot and node logs
    settle_s: float = 2.5  # after changing a cell, time for probes and telemetry to catch up
    pair: DevicePair | None = DEFAULT_PAIR  # device profiles the nodes emulate; None: this CPU
    repeats: int = MIN_REPEATS  # runs of every policy per cell, interleaved

    @property
    def rtts(self) -> tuple[int, ...]:
        return (1, 50, 200) if self.quick else (1, 20, 50, 100, 200)

    @property
    def problems(self) -> int:
        """Problems in each repeat of a cell."""
        return 1 if self.quick else 2

    @property
    def label(self) -> str:
        """What the figures were measured on."""
        return emulated_label(self.pair) if self.pair else "this machine's CPU, not emulated"

    def device_args(self, role: str) -> tuple[str, ...]:
        """``--device`` for a node of ``role`` under the pair's profiles."""
        if self.pair is None:
            return ()
        return ("--device", self.pair.edge if role == "edge" else self.pair.cloud)

    @property
    def failover_requests(self) -> int:
        return 30 if self.quick else 100


async def _solve(stub: pb_grpc.EdgeStub, question: str, mode: int, k: int) -> pb.SolveReply:
    req = pb.SolveRequest(
        prompt=question,
        mode=mode,
        draft_length=k,
        max_new_tokens=48,
        k_policy="fixed" if k else "",  # adaptive: the plan's k, revised with the plan
        objective=pb.OBJECTIVE_LATENCY,
    )
    return await stub.Solve(req, timeout=120)


async def _warm_up(edge: str, problems: list[task.Problem]) -> None:
    async with aio_channel(edge) as ch:
        stub = pb_grpc.EdgeStub(ch)
        for p in problems:
            await _solve(stub, p.question, pb.MODE_TOKEN_SPECULATION, 4)


async def _policy(edge: str, problems: list[task.Problem], mode: int, k: int) -> dict[str, Any]:
    """ms per token of one policy over ``problems``, and the modes its replies ran in."""
    wall, tokens = 0.0, 0
    chosen: dict[str, int] = {}
    async with aio_channel(edge) as ch:
        stub = pb_grpc.EdgeStub(ch)
        for p in problems:
            t0 = time.perf_counter()
            r = await _solve(stub, p.question, mode, k)
            wall += time.perf_counter() - t0
            tokens += len(r.tokens)
            key = pb.Mode.Name(r.mode)
            chosen[key] = chosen.get(key, 0) + 1
    return {"ms_per_token": 1e3 * wall / max(tokens, 1), "chosen": chosen}


def _cell(edge: str, problems: list[task.Problem], repeats: int) -> dict[str, dict[str, Any]]:
    """Every policy over the same problems, ``repeats`` times interleaved: the median ms per
    token with its spread, and what the adaptive policy chose."""

    def config(mode: int, k: int) -> Any:
        return lambda: asyncio.run(_policy(edge, problems, mode, k))

    runs = interleaved({name: config(mode, k) for name, mode, k in POLICIES}, repeats)
    out: dict[str, dict[str, Any]] = {}
    for name, results in runs.items():
        spread = Spread.of([r["ms_per_token"] for r in results])
        out[name] = {"ms_per_token": spread.median, "spread": spread.as_dict()}
    chosen: dict[str, int] = {}
    for r in runs["adaptive"]:
        for mode, n in r["chosen"].items():
            chosen[mode] = chosen.get(mode, 0) + n
    out["adaptive"]["chosen"] = chosen
    return out


async def _failover(
    edge: str, cluster: LocalCluster, victims: list[Proc], n: int
) -> dict[str, Any]:
    """n requests from 4 clients while two of three clouds are killed; count what is lost."""
    problems = task.generate(n, task.HELDOUT_SEED + 7)
    results: list[pb.SolveReply | None] = [None] * n
    errors: list[str] = []
    done = [0]
    kill_at = {n // 3: victims[0], (2 * n) // 3: victims[1]}

    async def client(c: int) -> None:
        async with aio_channel(edge) as ch:
            stub = pb_grpc.EdgeStub(ch)
            for i in range(c, n, 4):
                mode = random.Random(i).choice([pb.MODE_TOKEN_SPECULATION, pb.MODE_CLOUD_ONLY])
                try:
                    results[i] = await _solve(stub, problems[i].question, mode, 4)
                except grpc.aio.AioRpcError as exc:
                    errors.append(f"{i}: {exc.code().name}")
                done[0] += 1
                victim = kill_at.pop(done[0], None)
                if victim is not None:
                    cluster.kill(victim)

    await asyncio.gather(*(client(c) for c in range(4)))
    replies = [r for r in results if r is not None]
    return {
        "requests": n,
        "lost": n - sum(1 for r in replies if r.tokens),
        "errors": errors,
        "degraded": sum(r.degraded for r in replies),
        "correct": sum(
            task.is_correct(p, r.text) for p, r in zip(problems, results, strict=True) if r
        ),
    }


def run_schedule_bench(cfg: ScheduleBenchConfig) -> dict[str, Any]:
    """Run the grid and the failover phase; print, plot and return the report."""
    problems = task.generate(cfg.problems, task.HELDOUT_SEED + 3)
    grid: dict[str, dict[str, Any]] = {}
    with LocalCluster(cfg.out_dir / "nodes") as cluster:
        coord = cluster.start("coordinator", "coordinator")
        cloud = cluster.start(
            "cloud",
            "cloud-a",
            *("--model", "target", "--coordinator", coord.address, *cfg.device_args("cloud")),
        )
        link = LinkProxy(ProxyConfig(upstream=cloud.address)).start_in_thread()
        edge = cluster.start(
            "edge",
            "edge-a",
            "--coordinator",
            coord.address,
            "--route",
            f"{cloud.address}={link.address}",
            *cfg.device_args("edge"),
        )
        # warm-up: the scheduler learns acceptance from traffic, as it would in service
        asyncio.run(_warm_up(edge.address, task.generate(4, task.HELDOUT_SEED + 11)))
        cells = [(rtt, load) for rtt in cfg.rtts for load in LOADS]
        for rtt, load in tqdm(cells, desc=f"grid cells ({cfg.label})"):
            link.set(LinkSpec.symmetric(latency_ms=rtt / 2))
            # one speculating request measures the new RTT (its rounds do), as bench edge-cloud
            # settles a link: the cell measures the scheduler at the link, not catching up to it
            asyncio.run(_warm_up(edge.address, task.generate(1, task.HELDOUT_SEED + 11)))
            loader = verify_load(cloud.address, sessions=4) if load == "busy" else nullcontext()
            with loader:
                time.sleep(cfg.settle_s)
                grid[f"{rtt}/{load}"] = _cell(edge.address, problems, cfg.repeats)
        link.set(LinkSpec())  # failover runs over a plain link; cloud-a stays reachable
        extra = [
            cluster.start(
                "cloud",
                f"cloud-{x}",
                *("--model", "target", "--coordinator", coord.address, *cfg.device_args("cloud")),
            )
            for x in "bc"
        ]
        time.sleep(cfg.settle_s)
        failover = asyncio.run(_failover(edge.address, cluster, extra, cfg.failover_requests))
        link.stop()
    report = _summarise(grid, failover, cfg)
    _plot(grid, cfg)
    return report


def _summarise(
    grid: dict[str, Any], failover: dict[str, Any], cfg: ScheduleBenchConfig
) -> dict[str, Any]:
    statics = [name for name, _, _ in POLICIES if name != "adaptive"]
    ratios = {}
    for cell, res in grid.items():
        best = min(res[s]["ms_per_token"] for s in statics)
        ratios[cell] = res["adaptive"]["ms_per_token"] / best
    mean = {
        name: sum(r[name]["ms_per_token"] for r in grid.values()) / len(grid)
        for name, _, _ in POLICIES
    }
    report = {
        "emulated": cfg.label if cfg.pair else None,
        "config": {
            "quick": cfg.quick,
            "rtts_ms": list(cfg.rtts),
            "problems_per_repeat": cfg.problems,
            "repeats": cfg.repeats,
            "devices": [cfg.pair.edge, cfg.pair.cloud] if cfg.pair else None,
        },
        "worst_cell_ratio": max(ratios.values()),
        "cell_ratios": ratios,
        "mean_ratio_vs_static": {s: mean["adaptive"] / mean[s] for s in statics},
        "failover_lost": failover["lost"],
        "failover": failover,
        "grid": grid,
    }
    rows = {
        cell: {**{n: r[n]["ms_per_token"] for n, _, _ in POLICIES}, "ratio": ratios[cell]}
        for cell, r in grid.items()
    }
    print(f"\n{cfg.label}: median ms per token over {cfg.repeats} interleaved repeats")
    print_table("rtt/load", rows, [n for n, _, _ in POLICIES] + ["ratio"])
    print(f"\nworst_cell_ratio {report['worst_cell_ratio']:.3f} (target <= 1.10)")
    for s, v in report["mean_ratio_vs_static"].items():
        print(f"mean_ratio_vs_static[{s}] {v:.3f} (target < 1)")
    print(f"failover_lost {failover['lost']} of {failover['requests']} (target 0)")
    return report


def _plot(grid: dict[str, Any], cfg: ScheduleBenchConfig) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, load in zip(axes, LOADS, strict=True):
        for name, _, _ in POLICIES:
            ys = [grid[f"{r}/{load}"][name]["ms_per_token"] for r in cfg.rtts]
            style = "o-" if name == "adaptive" else "--"
            ax.plot(cfg.rtts, ys, style, label=name, linewidth=2.5 if name == "adaptive" else 1)
        ax.set_title(f"cloud {load}")
        ax.set_xlabel("RTT edge-cloud (ms)")
        ax.set_yscale("log")
    axes[0].set_ylabel("latency per token (ms)")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"Adaptive scheduling vs static policies ({cfg.label}; link emulated)")
    fig.tight_layout()
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(cfg.out_dir / "bench-schedule.png", dpi=110)
    plt.close(fig)
    print(f"plot: {cfg.out_dir / 'bench-schedule.png'}")
