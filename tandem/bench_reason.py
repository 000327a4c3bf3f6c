"""``tandem bench reason``: step speculation and PRM-guided search across edge and cloud, one run.

A coordinator, a cloud node (target + PRM) and two edge nodes run as processes on loopback. Step
speculation is timed against cloud-only generation on the same problems; every search strategy
runs at every budget through the edge's Reason call (drafts fanned out to both edges, steps
scored in batches on the cloud), and accuracy is plotted against the budget.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from models import task
from node_runtime.serving import aio_channel
from tandem.cluster import LocalCluster
from tandem.report import print_table
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

SEARCHES = (
    "best_of_n",
    "best_of_n_weighted",
    "majority_vote",
    "beam",
    "dvts",
    "a_star",
    "particle_filter",
)


@dataclass(frozen=True)
class ReasonBenchConfig:
    """Sizes of one run."""

    quick: bool = False  # fewer problems and budgets
    out_dir: Path = Path("runs/bench-reason")  # plot and node logs
    threshold: float = 0.4  # step speculation: keep a drafted step scoring at least this
    lookahead: int = 16  # step speculation: steps drafted and scored per round

    @property
    def spec_problems(self) -> int:
        return 10 if self.quick else 100

    @property
    def search_problems(self) -> int:
        return 8 if self.quick else 40

    @property
    def budgets(self) -> tuple[int, ...]:
        return (1, 4, 16) if self.quick else (1, 2, 4, 8, 16, 32, 64)


def spec_variants(cfg: ReasonBenchConfig) -> dict[str, dict[str, Any]]:
    """Step speculation settings timed on the same problems; the first is the reported one."""
    return {
        "specreason": {"lookahead": cfg.lookahead},
        # the rejected step written in a second call, from scratch: the scheme before the
        # rewrite moved into the scoring call
        "separate_rewrite": {"lookahead": cfg.lookahead, "separate_rewrite": True},
        "one_step_per_round": {"lookahead": 1},  # SpecReason's scheme
    }


async def _specreason(
    edge: str, problems: list[task.Problem], cfg: ReasonBenchConfig
) -> dict[str, dict[str, float]]:
    """Wall time, right answers and drafted/accepted steps per variant and for cloud-only.

    Each problem runs every variant and then cloud-only, so slow spells of the machine fall on
    all of them alike.
    """
    variants = spec_variants(cfg)
    zero = {"s": 0.0, "ok": 0, "drafted": 0, "accepted": 0, "confirmed": 0}
    out = {name: dict(zero) for name in [*variants, "cloud_only"]}
    async with aio_channel(edge) as ch:
        stub = pb_grpc.EdgeStub(ch)
        for p in tqdm(problems, desc="step speculation vs cloud-only", leave=False):
            for name, extra in variants.items():
                req = pb.ReasonRequest(
                    question=p.question, strategy="specreason", threshold=cfg.threshold, **extra
                )
                t0 = time.perf_counter()
                r = await stub.Reason(req, timeout=60)
                o = out[name]
                o["s"] += time.perf_counter() - t0
                o["ok"] += task.is_correct(p, r.text)
                o["drafted"] += r.account.drafted_steps
                o["accepted"] += r.account.accepted_steps
                o["confirmed"] += r.account.confirmed_steps
            t0 = time.perf_counter()
            c = await stub.Solve(
                pb.SolveRequest(prompt=p.question, mode=pb.MODE_CLOUD_ONLY, max_new_tokens=48),
                timeout=60,
            )
            out["cloud_only"]["s"] += time.perf_counter() - t0
            out["cloud_only"]["ok"] += task.is_correct(p, c.text)
    return out


async def _search(
    edge: str, problems: list[task.Problem], budgets: tuple[int, ...]
) -> dict[str, Any]:
    runs = [(s, n) for s in ("greedy", *SEARCHES) for n in (budgets if s != "greedy" else (1,))]
    res: dict[str, dict[int, dict[str, float]]] = {}
    async with aio_channel(edge) as ch:
        stub = pb_grpc.EdgeStub(ch)
        for strategy, n in tqdm(runs, desc="search strategies x budgets"):
            ok = passes = tokens = 0
            for i, p in enumerate(problems):
                r = await stub.Reason(
                    pb.ReasonRequest(
                        question=p.question, strategy=strategy, n=n, m=min(4, n), seed=i
                    ),
                    timeout=120,
                )
                ok += task.is_correct(p, r.text)
                passes += r.account.scorer_calls
                tokens += r.account.drafted_tokens
            k = len(problems)
            res.setdefault(strategy, {})[n] = {
                "accuracy": ok / k,
                "prm_passes": passes / k,
                "drafted_tokens": tokens / k,
            }
    return res


def step_costs(problems: list[task.Problem], threshold: float) -> dict[str, float]:
    """Mean ms of the model work behind step speculation, timed in this process on one thread.

    The edge's int8 drafter writing a whole solution (and per token); one PRM pass over it, on
    ONNX Runtime and on torch; and, at the first step the PRM rejects, the target writing that
    step from scratch against rewriting it from the rejected draft.
    """
    from models.loader import load_lm
    from models.reasoning.proposer import LMStepProposer
    from models.reasoning.scorers import PRMScorer

    drafter = LMStepProposer(*load_lm("drafter-int8"))
    writer = LMStepProposer(*load_lm("target"))
    prms = {b: PRMScorer(backend=b) for b in ("onnx", "torch")}
    ms: dict[str, list[float]] = {}

    def timed(key: str, fn: Any, *args: Any) -> Any:
        t0 = time.perf_counter()
        out = fn(*args)
        ms.setdefault(key, []).append((time.perf_counter() - t0) * 1e3)
        return out

    tokens = 0
    for n, p in enumerate(tqdm([problems[0], *problems], desc="step costs", leave=False)):
        if n == 1:  # the first problem warmed the models up: its times are dropped
            ms.clear()
            tokens = 0
        drafts = timed("draft_solution", drafter.draft_steps, p.question, [], 16)
        tokens += sum(d.tokens for d in drafts)
        steps = [d.text for d in drafts if d.complete and d.text]
        scores = {b: timed(f"prm_{b}", s.score, p.question, steps) for b, s in prms.items()}
        low = [i for i, s in enumerate(scores["onnx"]) if s < threshold]
        if low:
            i = low[0]
            timed("step_from_scratch", writer.propose, p.question, [steps[:i]], 1, 0.0, 0)
            timed("step_from_draft", writer.rewrite, p.question, steps[:i], steps[i])
    out = {f"{k}_ms": sum(v) / len(v) for k, v in ms.items()}
    out["drafter_ms_per_token"] = sum(ms["draft_solution"]) / max(tokens, 1)
    out["rejected_problems"] = len(ms.get("step_from_draft", []))
    return out


def _passes_to_reach(curve: dict[int, dict[str, float]], level: float) -> float | None:
    hits = [v["prm_passes"] for v in curve.values() if v["accuracy"] >= level - 1e-9]
    return min(hits) if hits else None


def run_reason_bench(cfg: ReasonBenchConfig) -> dict[str, Any]:
    """Both phases; print the tables, write the plot, return the report."""
    spec_problems = task.generate(cfg.spec_problems, task.HELDOUT_SEED + 21)
    search_problems = task.generate(cfg.search_problems, task.HELDOUT_SEED + 22)
    with LocalCluster(cfg.out_dir / "nodes") as cluster:
        coord = cluster.start("coordinator", "coordinator")
        cluster.start("cloud", "cloud-a", "--model", "target", "--coordinator", coord.address)
        edges = [
            cluster.start("edge", f"edge-{i}", "--coordinator", coord.address) for i in range(2)
        ]
        time.sleep(2.0)  # edges learn of each other through the coordinator's node list
        spec = asyncio.run(_specreason(edges[0].address, spec_problems, cfg))
        search = asyncio.run(_search(edges[0].address, search_problems, cfg.budgets))
        target_acc = asyncio.run(_target_accuracy(edges[0].address, search_problems))
    costs = step_costs(spec_problems, cfg.threshold)
    k = len(spec_problems)
    cloud = spec.pop("cloud_only")
    variants = {
        name: {
            "latency_ratio": v["s"] / cloud["s"],
            "accuracy": v["ok"] / k,
            "ms_per_problem": v["s"] / k * 1e3,
            "step_acceptance": v["accepted"] / max(v["drafted"], 1),
            "confirmed_steps": v["confirmed"],
        }
        for name, v in spec.items()
    }
    main = spec["specreason"]
    greedy = search["greedy"][1]["accuracy"]
    level = min(max(v["accuracy"] for v in search[s].values()) for s in ("a_star", "best_of_n"))
    a_star, bon = (_passes_to_reach(search[s], level) for s in ("a_star", "best_of_n"))
    at16 = {s: search[s][16]["accuracy"] for s in SEARCHES if 16 in search[s]}
    reach = [
        (s, n)
        for s in SEARCHES
        for n, v in search[s].items()
        if n <= 64 and v["accuracy"] >= target_acc - 0.03
    ]
    report = {
        "config": {
            "quick": cfg.quick,
            "threshold": cfg.threshold,
            "lookahead": cfg.lookahead,
            "budgets": list(cfg.budgets),
        },
        "specreason_latency_ratio": main["s"] / cloud["s"],
        "specreason_accuracy_delta": (main["ok"] - cloud["ok"]) / k,
        "specreason_accuracy": main["ok"] / k,
        "cloud_only_accuracy": cloud["ok"] / k,
        "cloud_only_ms_per_problem": cloud["s"] / k * 1e3,
        "step_acceptance": main["accepted"] / max(main["drafted"], 1),
        "specreason_variants": variants,
        "step_costs": costs,
        "astar_prm_pass_ratio": (a_star / bon) if a_star and bon else None,
        "astar_vs_bon_accuracy_level": level,
        "search_gain_over_drafter": max(at16.values()) - greedy if at16 else None,
        "drafter_greedy_accuracy": greedy,
        "target_accuracy": target_acc,
        "reaches_target_minus_0.03": [f"{s}@{n}" for s, n in reach],
        "search": {s: {str(n): v for n, v in c.items()} for s, c in search.items()},
    }
    _print(report, search)
    _plot(search, greedy, target_acc, variants, cfg)
    return report


async def _target_accuracy(edge: str, problems: list[task.Problem]) -> float:
    async with aio_channel(edge) as ch:
        stub = pb_grpc.EdgeStub(ch)
        ok = 0
        for p in problems:
            r = await stub.Solve(
                pb.SolveRequest(prompt=p.question, mode=pb.MODE_CLOUD_ONLY), timeout=60
            )
            ok += task.is_correct(p, r.text)
    return ok / len(problems)


def _print(report: dict[str, Any], search: dict[str, Any]) -> None:
    rows = {s: {str(n): v["accuracy"] for n, v in c.items()} for s, c in search.items()}
    budgets = sorted({n for c in search.values() for n in c})
    print_table("strategy", rows, [str(n) for n in budgets])
    print()
    variants = report["specreason_variants"]
    print_table("step speculation", variants, list(next(iter(variants.values()))))
    print()
    print_table("model costs", {"mean": report["step_costs"]}, list(report["step_costs"]))
    print()
    for key in (
        "specreason_latency_ratio",
        "specreason_accuracy_delta",
        "step_acceptance",
        "astar_prm_pass_ratio",
        "search_gain_over_drafter",
        "drafter_greedy_accuracy",
        "target_accuracy",
    ):
        v = report[key]
        print(f"{key:28s} {v:.4g}" if isinstance(v, float) else f"{key:28s} {v}")
    print(
        f"{'reaches target - 0.03':28s} {', '.join(report['reaches_target_minus_0.03']) or 'none'}"
    )


def _plot(
    search: dict[str, Any],
    greedy: float,
    target: float,
    variants: dict[str, dict[str, float]],
    cfg: ReasonBenchConfig,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    for s in SEARCHES:
        ns = sorted(search[s])
        ax.plot(ns, [search[s][n]["accuracy"] for n in ns], "o-", label=s)
    ax.axhline(greedy, color="grey", linestyle=":", label="drafter greedy")
    ax.axhline(target, color="black", linestyle="--", label="target (cloud-only)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("budget N (candidates)")
    ax.set_ylabel("accuracy (held-out)")
    ax.set_title("PRM-guided search: edge drafters, cloud PRM")
    ax.legend(fontsize=7, loc="lower right")
    names = list(variants)
    bars = bx.barh(names, [variants[n]["latency_ratio"] for n in names], color="tab:blue")
    bx.bar_label(bars, fmt="%.2f", fontsize=8)
    bx.axvline(1.0, color="black", linestyle="--", label="cloud-only")
    bx.axvline(0.5, color="tab:red", linestyle=":", label="target 0.5")
    bx.invert_yaxis()
    bx.set_xlabel("wall time / cloud-only")
    bx.set_title("step speculation")
    bx.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(cfg.out_dir / "bench-reason.png", dpi=110)
    plt.close(fig)
    print(f"plot: {cfg.out_dir / 'bench-reason.png'}")
