"""``tandem bench moe``: MoE expert offloading on the edge, the cloud as expert store and server.

One run measures, on the bundled MoE target (8 experts, top-2, 4 MoE layers):

1. traces: held-out problems decoded all-resident, recording each layer step's experts and the
   cross-layer predictor's guesses (recall@2 per layer);
2. policies: every eviction policy and Belady's MIN replayed on the trace at 10%..100% of the
   expert bytes (the policy reported at 50% is chosen on a separate calibration trace);
3. live, at the model's real sizes: an expert server in its own process behind the link
   emulator (100 Mbit/s, 20 ms RTT), the edge decoding with 50% of the expert bytes resident,
   under load-on-demand, cache only, cache + prefetch, and cache + prefetch + remote compute
   chosen per miss by the cost model; repeats interleaved, median and spread; every logit
   compared with the all-resident run;
4. scaled: the live configurations replayed on the trace with expert bytes and compute of a
   real MoE on a device profile (``orin-agx/mixtral-8x7b-q4``), emulated.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from tandem.repeats import Spread, Target, interleaved, paired_ratios
from tandem.report import write_json

POLICY_NAMES = ("lru", "lfu", "shallow")
BUDGETS = tuple(round(0.1 * i, 1) for i in range(1, 11))
TARGETS = {
    "hit_rate_gap": Target("<=", 0.05),
    "prediction_recall": Target(">=", 0.9),
    "decode_speedup_vs_on_demand": Target(">=", 4.0),
    "lossless_max_abs_diff": Target("==", 0.0),
}


@dataclass(frozen=True)
class MoEBenchConfig:
    """Sizes and settings of one run."""

    quick: bool = False  # fewer problems
    out_dir: Path = Path("runs/bench-moe")  # plot
    checkpoint: str = "moe-target"  # the MoE served
    repeats: int = 3  # per live configuration, interleaved
    budget_share: float = 0.5  # resident expert bytes / all expert bytes
    bandwidth_mbit: float = 100.0  # emulated link to the expert store
    rtt_ms: float = 20.0  # its round trip (half each way)
    profile: str = "orin-agx/mixtral-8x7b-q4"  # the device the scaled replay emulates

    @property
    def trace_problems(self) -> int:
        return 16 if self.quick else 60

    @property
    def live_problems(self) -> int:
        return 3 if self.quick else 8


def live_configs(budget: int, policy: str, link: Any) -> dict[str, Any]:
    """The edge configurations timed live; ``full`` is the system, fixed before measuring."""
    from models.moe.offload import OffloadConfig

    base = OffloadConfig(budget, policy=policy, link=link)
    return {
        "on-demand": OffloadConfig(0, prefetch=False, remote=False, link=link),
        "cache": replace(base, prefetch=False, remote=False),
        "cache+prefetch": replace(base, remote=False),
        "full": base,
    }


def _decode(lm: Any, ids: list[int], eos: int) -> tuple[list[int], list[Any], float, int]:
    """Greedy: prefill, then one token at a time. (tokens, logit rows, decode s, decode steps)."""
    import numpy as np

    s = lm.session()
    rows = [s.extend(ids)]
    out, spent, steps = list(ids), 0.0, 0
    nxt = int(rows[-1][-1].argmax())
    while nxt != eos and len(out) < lm.max_len:
        out.append(nxt)
        t0 = time.perf_counter()
        rows.append(s.extend([nxt]))
        spent += time.perf_counter() - t0
        steps += 1
        nxt = int(rows[-1][-1].argmax())
    return out, [np.concatenate(rows)], spent, steps


def _replay(lm: Any, out: list[int], prompt: list[int]) -> Any:
    """All-resident logits of the same feeds (prompt, then one token at a time)."""
    import numpy as np

    s = lm.session()
    return np.concatenate([s.extend(prompt), *(s.extend([t]) for t in out[len(prompt) :])])


def record_trace(cfg: MoEBenchConfig, seed: int, n: int) -> dict[str, Any]:
    """Decode ``n`` problems all-resident; the trace, rows, predictions and recall."""
    from edge_node.experts import build_edge_moe
    from models import task
    from models.moe.offload import OffloadConfig

    tok = task.WordTokenizer()
    edge = build_edge_moe(cfg.checkpoint, OffloadConfig(1 << 40, remote=False, prefetch=False))
    try:
        for p in task.generate(n, seed):
            _decode(edge.lm, [tok.bos_id, *tok.encode(p.question)], tok.eos_id)
    finally:
        edge.close()
    st = edge.executor.stats
    return {
        "trace": st.trace,
        "rows": st.rows,
        "predicted": st.predicted,
        "refined": st.refined,
        "recall": st.recall.overall(),
        "recall_early": st.recall_early.overall(),
        "recall_early_per_layer": st.recall_early.per_layer(),
        "recall_per_layer": st.recall.per_layer(),
    }


def policy_curves(trace: list, expert_bytes: int, n_experts: int, n_layers: int) -> dict:
    """Hit rate per policy (and Belady) per budget share, demand-paged replay."""
    from models.moe.belady import replay_named

    total = expert_bytes * n_experts * n_layers
    return {
        name: {
            str(b): replay_named(trace, int(total * b), expert_bytes, name, n_layers).hit_rate
            for b in BUDGETS
        }
        for name in (*POLICY_NAMES, "belady")
    }


class ExpertServerProcess:
    """``python -m cloud_node.experts`` in its own process; its address once it listens."""

    def __init__(self, checkpoint: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="tandem-moe-")
        ready = Path(self.dir) / "ready.json"
        cmd = [sys.executable, "-m", "cloud_node.experts", "--checkpoint", checkpoint]
        self.proc = subprocess.Popen(
            [*cmd, "--ready-file", str(ready)], cwd=Path(__file__).resolve().parents[1]
        )
        end = time.monotonic() + 60
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > end:
                self.stop()
                raise RuntimeError("the expert server did not start")
            time.sleep(0.05)
        self.address = json.loads(ready.read_text())["address"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def live_run(cfg: MoEBenchConfig, budget: int, policy: str) -> dict[str, Any]:
    """Every live configuration over the emulated link, interleaved; figures per config."""
    import numpy as np
    from tqdm import tqdm

    from edge_node.experts import build_edge_moe
    from models import task
    from models.moe.costs import LinkModel
    from models.moe.model import load_moe
    from models.torch_backend import TorchLM
    from simulations.link.proxy import LinkProxy, LinkSpec, ProxyConfig

    tok = task.WordTokenizer()
    problems = task.generate(cfg.live_problems + 1000, task.HELDOUT_SEED)[1000:]
    prompts = [[tok.bos_id, *tok.encode(p.question)] for p in problems]
    reference = TorchLM(load_moe(cfg.checkpoint))
    link_model = LinkModel(cfg.bandwidth_mbit * 1e6 / 8, cfg.rtt_ms / 1e3)
    configs = live_configs(budget, policy, link_model)
    server = ExpertServerProcess(cfg.checkpoint)
    spec = LinkSpec.symmetric(latency_ms=cfg.rtt_ms / 2, bandwidth_mbit=cfg.bandwidth_mbit)
    link = LinkProxy(ProxyConfig(upstream=server.address), spec).start_in_thread()
    bar = tqdm(total=len(configs) * cfg.repeats, desc="bench moe live (emulated link)")
    worst = [0.0]

    def run(name: str) -> dict[str, Any]:
        edge = build_edge_moe(cfg.checkpoint, configs[name], cloud=link.address)
        spent, steps = 0.0, 0
        try:
            for ids in prompts:
                out, rows, s, n = _decode(edge.lm, ids, tok.eos_id)
                spent, steps = spent + s, steps + n
                diff = np.abs(rows[0] - _replay(reference, out, ids))
                worst[0] = max(worst[0], float(diff.max()))
        finally:
            edge.close()
        bar.update(1)
        st = edge.executor.stats
        misses = st.requests - st.hits
        return {
            "decode_tokens_per_s": steps / spent,
            "hit_rate": st.hit_rate,
            "late_hit_rate": st.late_hits / st.requests,
            "remote_share": st.actions.get("remote", 0) / misses if misses else 0.0,
            "stall_s_per_token": st.stall_s / max(1, steps),
            "tiers": edge.tiers(),
            "actions": dict(st.actions),
            "bytes": st.as_dict()["bytes"],
        }

    try:
        runs = interleaved({n: (lambda n=n: run(n)) for n in configs}, repeats=cfg.repeats)
    finally:
        bar.close()
        link.stop()
        server.stop()
    return {"runs": runs, "lossless_max_abs_diff": worst[0]}


# Mixtral 8x7B (Mistral AI's config.json: hidden_size 4096, intermediate_size 14336, 32 layers,
# 8 local experts, 2 per token; 46.7B parameters in the Mixtral paper, arXiv 2401.04088).
MIXTRAL = {"d_model": 4096, "d_expert": 14336, "layers": 32, "experts": 8, "params": 46.7e9}
BITS = 4.5  # 4-bit weights with a scale per group of 32 (the profile's precision)


def scaled_sizes(profile_name: str, link: Any) -> Any:
    """Mixtral's expert bytes and compute on the edge profile; the cloud computes on an A100."""
    from models.moe.simulate import SimSizes
    from node_runtime.profiles import MOE_PROFILES, get_profile

    if profile_name not in MOE_PROFILES:
        raise ValueError(f"profile: {profile_name!r} is not one of {sorted(MOE_PROFILES)}")
    p, cloud = MOE_PROFILES[profile_name], get_profile("a100/llama2-7b-fp16")
    m = MIXTRAL
    expert_params = 3 * m["d_model"] * m["d_expert"]
    expert_bytes = int(expert_params * BITS / 8)
    dense_params = m["params"] - m["layers"] * m["experts"] * expert_params
    bw = p.bandwidth_gbs.value * 1e9
    return SimSizes(
        expert_bytes=expert_bytes,
        d_model=m["d_model"],
        activation_bytes=2,
        device_expert_s=expert_bytes / bw,
        device_row_s=2 * expert_params / (p.tflops.value * 1e12),
        server_expert_s=expert_params * 2 / (cloud.bandwidth_gbs.value * 1e9),
        dense_token_s=dense_params / m["layers"] * BITS / 8 / bw
        + p.overhead_ms.value / 1e3 / m["layers"],
        link=link,
    )


def real_sizes(expert_bytes: int, d_model: int, token_s: float, n_layers: int, link: Any) -> Any:
    """The bundled model's sizes with this machine's measured all-resident decode time."""
    from models.moe.simulate import SimSizes

    expert_s = expert_call_s(d_model, expert_bytes // (3 * 4 * d_model))
    return SimSizes(
        expert_bytes=expert_bytes,
        d_model=d_model,
        activation_bytes=4,
        device_expert_s=expert_s,
        device_row_s=0.0,
        server_expert_s=expert_s,
        dense_token_s=max(0.0, token_s / n_layers - 2 * expert_s),
        link=link,
    )


def expert_call_s(d_model: int, d_expert: int, calls: int = 300) -> float:
    """Measured seconds of one fp32 SwiGLU expert on one row on this machine (median)."""
    import statistics

    import torch

    from models.moe.routing import expert_mlp

    x, gu, down = (
        torch.randn(1, d_model),
        torch.randn(2 * d_expert, d_model),
        torch.randn(d_model, d_expert),
    )
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        expert_mlp(x, gu, down)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def replay_configs(
    trace: dict[str, Any], sizes: Any, budget_share: float, policy: str, n_layers: int
) -> dict[str, dict[str, Any]]:
    """The live configurations replayed on the trace at ``sizes`` (deterministic)."""
    from models.moe.simulate import SimConfig, simulate

    n_experts = 1 + max(k.expert for step in trace["trace"] for k in step)
    budget = int(sizes.expert_bytes * n_experts * n_layers * budget_share)
    cfgs = {
        "on-demand": SimConfig(0, prefetch=False, remote=False),
        "cache": SimConfig(budget, policy, prefetch=False, remote=False),
        "cache+prefetch": SimConfig(budget, policy, remote=False),
        "full": SimConfig(budget, policy),
    }
    out = {}
    for name, c in cfgs.items():
        steps = [trace[k] for k in ("trace", "rows", "predicted", "refined")]
        r = simulate(*steps, n_layers, 2, sizes, c)
        misses = r.requests - r.hits
        out[name] = {
            "decode_tokens_per_s": r.decode_tokens_per_s,
            "hit_rate": r.hit_rate,
            "late_hit_rate": r.late_hits / r.requests if r.requests else 0.0,
            "remote_share": r.actions.get("remote", 0) / misses if misses else 0.0,
            "stall_s_per_token": r.stall_s / max(1, r.decode_tokens),
            "fetched_bytes": r.fetched_bytes,
            "remote_bytes": r.remote_bytes,
        }
    return out


def run_moe_bench(cfg: MoEBenchConfig) -> dict[str, Any]:
    """Everything above; prints the table, writes the plot, returns the JSON report."""
    import torch

    from models import task
    from models.moe.costs import LinkModel
    from models.moe.layouts import ExpertKey
    from models.moe.model import load_moe, moe_dir
    from models.moe.store import DiskStore
    from models.train import accuracy
    from tandem.bench_moe_report import plot, print_report

    torch.set_num_threads(1)
    module = load_moe(cfg.checkpoint)
    c = module.cfg
    acc = accuracy(module, task.generate(500, task.HELDOUT_SEED))  # type: ignore[arg-type]
    expert_bytes = DiskStore(moe_dir(cfg.checkpoint)).expert_bytes(ExpertKey(0, 0))
    total = expert_bytes * c.n_experts * c.n_layers
    budget = int(total * cfg.budget_share)
    calib = record_trace(cfg, task.TRAIN_SEED, cfg.trace_problems)
    t0 = time.perf_counter()
    held = record_trace(cfg, task.HELDOUT_SEED, cfg.trace_problems)
    resident_s = time.perf_counter() - t0
    calib_curves = policy_curves(calib["trace"], expert_bytes, c.n_experts, c.n_layers)
    share = str(cfg.budget_share)
    policy = max(POLICY_NAMES, key=lambda n: calib_curves[n][share])  # chosen on calibration
    curves = policy_curves(held["trace"], expert_bytes, c.n_experts, c.n_layers)
    link = LinkModel(cfg.bandwidth_mbit * 1e6 / 8, cfg.rtt_ms / 1e3)
    live = live_run(cfg, budget, policy)
    runs = live["runs"]
    decode_tokens = sum(1 for s in held["rows"] if sum(s) == c.top_k and s and s[0]) / c.n_layers
    real = real_sizes(expert_bytes, c.d_model, resident_s / max(1, decode_tokens), c.n_layers, link)
    scaled = scaled_sizes(cfg.profile, link)
    tps = {n: [r["decode_tokens_per_s"] for r in rs] for n, rs in runs.items()}
    speedup = Spread.of(paired_ratios(tps["full"], tps["on-demand"]))
    report: dict[str, Any] = {
        "emulated": f"link {cfg.bandwidth_mbit:g} Mbit/s, {cfg.rtt_ms:g} ms RTT (simulations.link)",
        "config": {**asdict(cfg), "out_dir": str(cfg.out_dir)},
        "model": {**asdict(c), "expert_bytes": expert_bytes, "expert_bytes_total": total},
        "moe_accuracy": acc,
        "dense_accuracy": 0.992,
        "policy": policy,
        "hit_rate": curves[policy][share],
        "belady_hit_rate": curves["belady"][share],
        "hit_rate_gap": curves["belady"][share] - curves[policy][share],
        "policy_curves": curves,
        "prediction_recall": held["recall"],
        "prediction_recall_per_layer": held["recall_per_layer"],
        "prediction_recall_early": held["recall_early"],
        "prediction_recall_early_per_layer": held["recall_early_per_layer"],
        "decode_speedup_vs_on_demand": speedup.as_dict(),
        "speedup_vs_cache_only": Spread.of(paired_ratios(tps["full"], tps["cache"])).as_dict(),
        "remote_compute_share": Spread.of([r["remote_share"] for r in runs["full"]]).as_dict(),
        "remote_compute_speedup_vs_fetch_only": Spread.of(
            paired_ratios(tps["full"], tps["cache+prefetch"])
        ).as_dict(),
        "lossless_max_abs_diff": live["lossless_max_abs_diff"],
        "live": {n: summarize(rs) for n, rs in runs.items()},
        "replay_real_sizes": replay_configs(held, real, cfg.budget_share, policy, c.n_layers),
        "scaled": {
            "emulated": f"{cfg.profile} (Mixtral 8x7B experts at {BITS} bits, A100 cloud), "
            "trace replay",
            "sizes": asdict(scaled),
            "configs": replay_configs(held, scaled, cfg.budget_share, policy, c.n_layers),
        },
    }
    sc = report["scaled"]["configs"]
    report["scaled"]["decode_speedup_vs_on_demand"] = (
        sc["full"]["decode_tokens_per_s"] / sc["on-demand"]["decode_tokens_per_s"]
    )
    report["scaled"]["remote_compute_speedup_vs_fetch_only"] = (
        sc["full"]["decode_tokens_per_s"] / sc["cache+prefetch"]["decode_tokens_per_s"]
    )
    report["targets"] = {
        k: {"target": str(t), "met": t.met(_median(report[k]))} for k, t in TARGETS.items()
    }
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    report["plot"] = str(plot(report, cfg.out_dir / "moe.png"))
    print_report(report)
    return report


def _median(v: Any) -> float:
    return float(v["median"]) if isinstance(v, dict) else float(v)


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and spread of each figure over the repeats, plus the last repeat's tiers."""
    keys = ("decode_tokens_per_s", "hit_rate", "late_hit_rate", "remote_share", "stall_s_per_token")
    out: dict[str, Any] = {k: Spread.of([r[k] for r in runs]).as_dict() for k in keys}
    out["tiers_last_repeat"] = runs[-1]["tiers"]
    out["actions_last_repeat"] = runs[-1]["actions"]
    out["bytes_last_repeat"] = runs[-1]["bytes"]
    return out


def _handler(args: argparse.Namespace) -> int:
    cfg = MoEBenchConfig(quick=args.quick, out_dir=Path(args.out))
    report = run_moe_bench(cfg)
    write_json(args.json, report)
    return 0


def add_parser(subparsers: Any) -> None:
    """``tandem bench moe``, attached to the existing ``bench`` command."""
    from tandem.cli import bench_subcommands

    bsub = bench_subcommands(subparsers)
    p = bsub.add_parser(
        "moe", help="MoE expert offloading: tiers, cache, prediction, emulated link"
    )
    p.add_argument("--quick", action="store_true", help="fewer problems, a few minutes")
    p.add_argument("--json", default="", help="write the figures here")
    p.add_argument("--out", default="runs/bench-moe", help="folder for the plot")
    p.set_defaults(func=_handler, fn=None)
