"""The main job: a local cluster runs held-out problems in every mode and compares them."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from models import task
from models.metrics import acceptance_rate, mean_accepted_length
from node_runtime.kinds import Mode
from node_runtime.serving import aio_channel
from tandem.cluster import LocalCluster
from tandem.report import bar_plot, print_table
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

MODES = {m.value: m.to_wire() for m in (Mode.CLOUD_ONLY, Mode.EDGE_ONLY, Mode.SPECULATION)}
# Asked when a model is a real checkpoint (hf:...): its tokenizer has no use for the synthetic
# task's questions, and its answers to them would mean nothing.
TEXT_PROMPTS = (
    "The three primary colors are",
    "To boil an egg, first",
    "A Raspberry Pi is a small computer that",
    "The speed of light is",
    "Write one sentence about why the sky is blue.",
    "List three uses of a hash function.",
    "The capital of France is",
    "Explain in one sentence what a compiler does.",
)


@dataclass(frozen=True)
class DemoConfig:
    """One demo run."""

    problems: int = 40  # held-out problems (bundled models) per mode
    target: str = "target"  # cloud model spec (models.loader)
    drafter: str = "drafter-int8"  # edge model spec
    edges: int = 2  # edge node processes
    k: int = 4  # starting draft length
    k_policy: str = "heuristic"  # fixed, heuristic or rtt
    temperature: float = 0.0  # 0: greedy
    max_new_tokens: int = 48  # per request
    out_dir: Path = Path("runs/demo")  # JSON, plot and node logs
    modes: tuple[str, ...] = tuple(MODES)  # which modes to run

    @property
    def bundled(self) -> bool:
        """Both models are the bundled task models (or their exports), not real checkpoints."""
        return not (self.target.startswith("hf:") or self.drafter.startswith("hf:"))


@dataclass
class ModeStats:
    """Totals of one mode."""

    requests: int = 0
    correct: int = 0
    tokens: int = 0
    wall_s: float = 0.0
    drafted: int = 0
    accepted: int = 0
    rounds: int = 0
    cloud_cpu_s: float = 0.0
    degraded: int = 0
    samples: list[dict[str, Any]] = field(default_factory=list)

    def summary(self, bundled: bool) -> dict[str, float | None]:
        return {
            "accuracy": self.correct / self.requests if bundled and self.requests else None,
            "tokens_per_s": self.tokens / self.wall_s if self.wall_s else 0.0,
            "acceptance_rate": acceptance_rate(self.accepted, self.drafted)
            if self.drafted
            else None,
            "mean_accepted_length": (
                mean_accepted_length(self.accepted, self.rounds) if self.rounds else None
            ),
            "cloud_ms_per_token": 1e3 * self.cloud_cpu_s / self.tokens if self.tokens else 0.0,
            "requests": float(self.requests),
            "degraded": float(self.degraded),
        }


def _wait_for_nodes(coordinator: str, edges: int, timeout_s: float = 30.0) -> list[pb.NodeInfo]:
    """The registered nodes, once a cloud and every edge are in."""

    async def poll() -> list[pb.NodeInfo]:
        async with aio_channel(coordinator) as ch:
            stub = pb_grpc.CoordinatorStub(ch)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                nodes = list((await stub.ListNodes(pb.ListNodesRequest(), timeout=2)).nodes)
                roles = [n.role for n in nodes]
                if roles.count(pb.ROLE_CLOUD) >= 1 and roles.count(pb.ROLE_EDGE) >= edges:
                    return nodes
                await asyncio.sleep(0.1)
            raise TimeoutError("the cloud and edge nodes did not all register with the coordinator")

    return asyncio.run(poll())


def _tokenizer_note(nodes: list[pb.NodeInfo]) -> str | None:
    """Why token speculation cannot run here (edge and cloud tokenizers differ), or None."""
    edge = {n.tokenizer for n in nodes if n.role == pb.ROLE_EDGE}
    cloud = {n.tokenizer for n in nodes if n.role == pb.ROLE_CLOUD}
    if edge <= cloud and len(cloud) == 1:
        return None
    return (
        f"speculation skipped: the drafter's tokenizer ({', '.join(sorted(edge))}) is not the "
        f"target's ({', '.join(sorted(cloud))}); token ids mean different words on each side"
    )


async def _run_mode(
    edges: list[str], mode: str, cfg: DemoConfig, prompts: list[tuple[str, task.Problem | None]]
) -> ModeStats:
    stats = ModeStats()
    bar = tqdm(total=len(prompts), desc=f"{mode:>12}", leave=True)
    channels = [aio_channel(a) for a in edges]

    async def worker(i: int) -> None:
        stub = pb_grpc.EdgeStub(channels[i])
        for j in range(i, len(prompts), len(edges)):
            text, problem = prompts[j]
            req = pb.SolveRequest(
                request_id=f"{mode}-{j}",
                prompt=text,
                mode=MODES[mode],
                max_new_tokens=cfg.max_new_tokens,
                draft_length=cfg.k,
                k_policy=cfg.k_policy,
                sampling=pb.Sampling(temperature=cfg.temperature, seed=j),
            )
            r = await stub.Solve(req, timeout=120)
            a = r.account
            ok = problem is not None and task.is_correct(problem, r.text)
            stats.requests += 1
            stats.correct += int(ok)
            stats.tokens += a.generated_tokens
            stats.wall_s += a.wall_s
            stats.drafted += a.drafted_tokens
            stats.accepted += a.accepted_tokens
            stats.rounds += a.verify_rounds
            stats.cloud_cpu_s += a.cloud_model_cpu_s
            stats.degraded += int(r.degraded)
            stats.samples.append({"id": j, "edge": edges[i], "text": r.text, "correct": ok})
            bar.update()

    try:
        await asyncio.gather(*(worker(i) for i in range(len(edges))))
    finally:
        bar.close()
        for ch in channels:
            await ch.close()
    return stats


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Start the cluster, run every mode, print the table, write JSON and a plot."""
    if cfg.problems < 1 or cfg.edges < 1:
        raise ValueError("need at least one problem and one edge node")
    unknown = set(cfg.modes) - set(MODES)
    if unknown:
        raise ValueError(f"unknown modes {sorted(unknown)}; known: {list(MODES)}")
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.bundled:
        problems = task.generate(cfg.problems, task.HELDOUT_SEED)
        prompts: list[tuple[str, task.Problem | None]] = [(p.question, p) for p in problems]
    else:
        prompts = [(TEXT_PROMPTS[i % len(TEXT_PROMPTS)], None) for i in range(cfg.problems)]
    results: dict[str, Any] = {}
    with LocalCluster(cfg.out_dir / "nodes") as cluster:
        coord = cluster.start("coordinator", "coordinator")
        cluster.start("cloud", "cloud-0", "--model", cfg.target, "--coordinator", coord.address)
        edges = [
            cluster.start(
                "edge", f"edge-{i}", "--model", cfg.drafter, "--coordinator", coord.address
            )
            for i in range(cfg.edges)
        ]
        modes = list(cfg.modes)
        note = _tokenizer_note(_wait_for_nodes(coord.address, cfg.edges))
        if note is not None and "speculation" in modes:
            print(note)
            modes.remove("speculation")
        for mode in modes:
            stats = asyncio.run(_run_mode([e.address for e in edges], mode, cfg, prompts))
            results[mode] = {**stats.summary(cfg.bundled), "samples": stats.samples[:5]}
    report = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "modes": results,
    }
    (cfg.out_dir / "demo.json").write_text(json.dumps(report, indent=2))
    columns = [
        "accuracy",
        "tokens_per_s",
        "acceptance_rate",
        "mean_accepted_length",
        "cloud_ms_per_token",
    ]
    print_table("mode", {m: {c: r[c] for c in columns} for m, r in results.items()}, columns)
    bar_plot(
        {m: {c: r[c] for c in columns} for m, r in results.items()},
        ["accuracy", "tokens_per_s", "cloud_ms_per_token"],
        cfg.out_dir / "demo.png",
        title=f"Tandem demo: {cfg.target} verifies {cfg.drafter}",
    )
    print(f"wrote {cfg.out_dir / 'demo.json'} and {cfg.out_dir / 'demo.png'}")
    return report
