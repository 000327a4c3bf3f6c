"""``tandem bench spec``: token speculation measured in one run, as ratios.

The cloud runs as its own process (as in deployment); the edge side runs in this process with
the int8 ONNX drafter. Every figure is computed from what this run measured.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cloud_node.engine import EngineConfig, Round, VerifyEngine
from edge_node.clouds import CloudDirectory
from edge_node.speculation import SpecResult, SpecSettings, Speculator
from models import task
from models.base import CausalLM
from models.generate import generate
from models.loader import load_lm
from models.metrics import (
    acceptance_rate,
    expected_tokens_per_round,
    mean_accepted_length,
    per_token_acceptance,
)
from models.sampling import SamplingParams
from models.speculative import Proposal
from node_runtime.serving import aio_channel
from tandem.cluster import LocalCluster
from tandem.report import print_table
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

K_SWEEP = (1, 2, 3, 4, 6, 8)


@dataclass(frozen=True)
class SpecBenchConfig:
    """Sizes of one benchmark run."""

    quick: bool = False  # a small run that finishes in under a minute
    out_dir: Path = Path("runs/bench-spec")  # plot and node logs
    target: str = "target"  # cloud model spec
    drafter: str = "drafter-int8"  # edge model spec (int8 ONNX)

    @property
    def problems(self) -> int:
        return 12 if self.quick else 100

    @property
    def batch_seconds(self) -> float:
        return 2.0 if self.quick else 6.0


def _prompts(tok: Any, n: int) -> list[list[int]]:
    return [[tok.bos_id, *tok.encode(p.question)] for p in task.generate(n, task.HELDOUT_SEED)]


async def _speculate_all(
    address: str, drafter: CausalLM, prompts: list[list[int]], k: int, desc: str
) -> list[SpecResult]:
    clouds = CloudDirectory("bench-edge", static=[address])
    spec = Speculator(drafter)
    out = []
    try:
        for p in tqdm(prompts, desc=desc, leave=False):
            s = SpecSettings(max_new=48, eos_id=task.WordTokenizer().eos_id, k=k, k_policy="fixed")
            out.append(await spec.run(p, SamplingParams(0.0), s, clouds.pick))
    finally:
        await clouds.close()
    return out


async def _cloud_only(address: str, prompts: list[list[int]]) -> tuple[int, float]:
    tokens, cpu = 0, 0.0
    async with aio_channel(address) as ch:
        stub = pb_grpc.CloudStub(ch)
        for p in tqdm(prompts, desc="cloud-only", leave=False):
            r = await stub.Generate(pb.GenerateRequest(prompt=p, max_new_tokens=48), timeout=60)
            tokens += len(r.tokens)
            cpu += r.model_cpu_s
    return tokens, cpu


def _k_stats(results: list[SpecResult], k: int) -> dict[str, float]:
    a = [r.account for r in results]
    drafted = sum(x.drafted_tokens for x in a)
    accepted = sum(x.accepted_tokens for x in a)
    rounds = sum(x.verify_rounds for x in a)
    per_token = per_token_acceptance(accepted, rounds, sum(x.full_rounds for x in a)) or 0.0
    tokens = sum(x.generated_tokens for x in a)
    return {
        "k": float(k),
        "acceptance_rate": acceptance_rate(accepted, drafted),
        "per_token_acceptance": per_token,
        "mean_accepted_length": mean_accepted_length(accepted, rounds),
        "theory_accepted_length": expected_tokens_per_round(per_token, k),
        "tokens_per_s": tokens / sum(x.wall_s for x in a),
        "cloud_cpu_s_per_token": sum(x.cloud_model_cpu_s for x in a) / max(tokens, 1),
        "edge_ms_per_token": 1e3 * sum(x.edge_model_s for x in a) / max(tokens, 1),
    }


async def _verify_load(
    address: str, refs: list[tuple[list[int], list[int]]], sessions: int, k: int, seconds: float
) -> tuple[float, list[float]]:
    """Verify rounds per second from ``sessions`` concurrent streams replaying known drafts.

    The drafts are the target's own greedy continuation, so every round keeps all k: the load is
    pure verification, with no drafter in the loop. Also returns each round's round trip minus
    the cloud's model time (ms), the gRPC and batching overhead.
    """
    stop_at = time.perf_counter() + seconds
    done = [0]
    overhead: list[float] = []

    async def one(i: int) -> None:
        async with aio_channel(address) as ch:
            call = pb_grpc.CloudStub(ch).Speculate(timeout=seconds + 30)
            n = 0
            while time.perf_counter() < stop_at:
                prompt, cont = refs[(i + n * sessions) % len(refs)]
                sid = f"load-{i}-{n}"
                n += 1
                await call.write(pb.SpecRequest(open=pb.OpenSession(session_id=sid, prompt=prompt)))
                await call.read()
                seq, rid = list(prompt), 0
                while len(seq) - len(prompt) + k + 1 <= len(cont) and time.perf_counter() < stop_at:
                    rid += 1
                    base = len(seq)
                    draft = cont[base - len(prompt) : base - len(prompt) + k]
                    t0 = time.perf_counter()
                    await call.write(
                        pb.SpecRequest(
                            verify=pb.VerifyRequest(
                                session_id=sid, round_id=rid, base_position=base, draft=draft
                            )
                        )
                    )
                    v = (await call.read()).verdict
                    overhead.append((time.perf_counter() - t0) * 1e3 - v.model_ms)
                    seq += [*draft[: v.accepted], v.next_token]
                    done[0] += 1
                await call.write(pb.SpecRequest(close=pb.CloseSession(session_id=sid)))
                await call.read()
            await call.done_writing()

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(sessions)))
    return done[0] / (time.perf_counter() - t0), overhead


async def _engine_load(
    lm: CausalLM, refs: list[tuple[list[int], list[int]]], max_batch: int, k: int, seconds: float
) -> float:
    """Verify rounds per second of the cloud's verify engine itself, 8 sessions, no transport.

    Same replayed drafts as ``_verify_load``; the sessions submit to a real VerifyEngine in this
    process, so the figure is the verifier's throughput without gRPC's per-message cost.
    """
    engine = VerifyEngine(lm, EngineConfig(max_batch=max_batch))
    engine.start()
    stop_at = time.perf_counter() + seconds
    done = [0]

    async def one(i: int) -> None:
        n = 0
        while time.perf_counter() < stop_at:
            prompt, cont = refs[(i + n * 8) % len(refs)]
            sid = f"engine-{i}-{n}"
            n += 1
            engine.open(sid, prompt, SamplingParams(0.0))
            seq, rid = list(prompt), 0
            while len(seq) - len(prompt) + k + 1 <= len(cont) and time.perf_counter() < stop_at:
                rid += 1
                base = len(seq)
                draft = cont[base - len(prompt) : base - len(prompt) + k]
                r = await engine.submit(Round(sid, rid, base, Proposal(np.asarray(draft), None)))
                seq += [*draft[: r.verdict.accepted], r.verdict.next_token]
                done[0] += 1
            engine.close(sid)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(8)))
    rate = done[0] / (time.perf_counter() - t0)
    await engine.stop()
    return rate


def _drafter_speed(fp32: CausalLM, int8: CausalLM, prompts: list[list[int]]) -> dict[str, float]:
    """ms per incremental token (torch fp32 vs ONNX int8) and teacher-forced greedy agreement."""
    times: dict[str, list[float]] = {"fp32": [], "int8": []}
    agree = total = 0
    for p in tqdm(prompts, desc="drafter fp32 vs int8", leave=False):
        ref = generate(fp32, p, SamplingParams(0.0), 40, task.WordTokenizer().eos_id)
        seq = [*p, *ref]
        for name, lm in (("fp32", fp32), ("int8", int8)):
            s = lm.session()
            s.extend(p)
            for t in ref:
                t0 = time.perf_counter()
                s.extend([t])
                times[name].append((time.perf_counter() - t0) * 1e3)
        a = int8.session().extend(seq[:-1])[len(p) - 1 :].argmax(-1)
        b = fp32.session().extend(seq[:-1])[len(p) - 1 :].argmax(-1)
        agree += int((a == b).sum())
        total += len(a)
    fp, q = statistics.median(times["fp32"]), statistics.median(times["int8"])
    return {
        "fp32_ms_per_token": fp,
        "int8_ms_per_token": q,
        "speedup": fp / q,
        "agreement": agree / total,
    }


def run_spec_bench(cfg: SpecBenchConfig) -> dict[str, Any]:
    """Run every measurement; print the table; write the plot; return the JSON report."""
    target, tok = load_lm(cfg.target)
    drafter, _ = load_lm(cfg.drafter)
    fp32, _ = load_lm("drafter")
    prompts = _prompts(tok, cfg.problems)
    refs = [(p, generate(target, p, SamplingParams(0.0), 48, tok.eos_id)) for p in prompts]
    report: dict[str, Any] = {"config": {"quick": cfg.quick, "problems": cfg.problems}}
    sweep: dict[int, dict[str, float]] = {}
    with LocalCluster(cfg.out_dir / "nodes") as cluster:
        cloud = cluster.start("cloud", "cloud-batched", "--model", cfg.target)
        solo = cluster.start("cloud", "cloud-solo", "--model", cfg.target, "--max-batch", "1")
        sub = prompts if not cfg.quick else prompts[:6]
        ks = K_SWEEP if not cfg.quick else (2, 4, 6)
        for k in ks:
            res = asyncio.run(_speculate_all(cloud.address, drafter, sub, k, f"k={k}"))
            sweep[k] = _k_stats(res, k)
        best_k = max(sweep, key=lambda k: sweep[k]["tokens_per_s"])
        res = asyncio.run(_speculate_all(cloud.address, drafter, prompts, best_k, "greedy match"))
        matches = [r.tokens == ref for r, (_, ref) in zip(res, refs, strict=True)]
        chosen = _k_stats(res, best_k)
        cloud_tokens, cloud_cpu = asyncio.run(_cloud_only(cloud.address, prompts))
        grpc_batched, _ = asyncio.run(_verify_load(cloud.address, refs, 8, 4, cfg.batch_seconds))
        grpc_solo, _ = asyncio.run(_verify_load(solo.address, refs, 8, 4, cfg.batch_seconds))
        _, overhead = asyncio.run(_verify_load(cloud.address, refs, 1, 4, cfg.batch_seconds))
    batched = asyncio.run(_engine_load(target, refs, 16, 4, cfg.batch_seconds))
    one_by_one = asyncio.run(_engine_load(target, refs, 1, 4, cfg.batch_seconds))
    speed = _drafter_speed(fp32, drafter, prompts[: 10 if cfg.quick else 50])
    report.update(
        {
            "greedy_match": sum(matches) / len(matches),
            "chosen_k": best_k,
            "mean_accepted_length": chosen["mean_accepted_length"],
            "theory_accepted_length": chosen["theory_accepted_length"],
            "acceptance_rate": chosen["acceptance_rate"],
            "per_token_acceptance": chosen["per_token_acceptance"],
            "cloud_compute_ratio": chosen["cloud_cpu_s_per_token"] / (cloud_cpu / cloud_tokens),
            "batch_gain_8": batched / one_by_one,
            "verify_rounds_per_s_batched": batched,
            "verify_rounds_per_s_one_at_a_time": one_by_one,
            "batch_gain_8_grpc": grpc_batched / grpc_solo,
            "grpc_rounds_per_s_batched": grpc_batched,
            "grpc_rounds_per_s_one_at_a_time": grpc_solo,
            "overhead_ms_p50": float(np.median(overhead)),
            "overhead_ms_p95": float(np.percentile(overhead, 95)),
            "onnx_int8_speedup": speed["speedup"],
            "onnx_int8_agreement": speed["agreement"],
            "drafter_ms_per_token": speed,
            "k_sweep": {str(k): v for k, v in sweep.items()},
        }
    )
    _print_and_plot(report, sweep, cfg.out_dir)
    return report


TARGETS = {
    "greedy_match": ("==", 1.0),
    "mean_accepted_length": (">=", 2.5),
    "cloud_compute_ratio": ("<=", 0.5),
    "batch_gain_8": (">=", 3.0),
    "overhead_ms_p50": ("<=", 2.0),
    "onnx_int8_speedup": (">=", 1.5),
    "onnx_int8_agreement": (">=", 0.95),
}


def _meets(value: float, op: str, bound: float) -> bool:
    return {"==": value == bound, ">=": value >= bound, "<=": value <= bound}[op]


def _print_and_plot(report: dict[str, Any], sweep: dict[int, dict[str, float]], out: Path) -> None:
    rows = {
        key: {
            "value": float(report[key]),
            "target": f"{op} {bound}",
            "met": _meets(float(report[key]), op, bound),
        }
        for key, (op, bound) in TARGETS.items()
    }
    mal, theory = report["mean_accepted_length"], report["theory_accepted_length"]
    rows["theory_accepted_length"] = {
        "value": theory,
        "target": "within 10%",
        "met": abs(theory - mal) <= 0.1 * mal,
    }
    print_table("metric", rows, ["value", "target", "met"])
    print()
    print_table(
        "k",
        {str(k): v for k, v in sweep.items()},
        ["mean_accepted_length", "theory_accepted_length", "per_token_acceptance", "tokens_per_s"],
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted(sweep)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    a1.plot(ks, [sweep[k]["mean_accepted_length"] for k in ks], "o-", label="measured")
    a1.plot(ks, [sweep[k]["theory_accepted_length"] for k in ks], "s--", label="theory")
    a1.set_xlabel("draft length k")
    a1.set_ylabel("mean accepted length")
    a1.legend()
    a2.plot(ks, [sweep[k]["tokens_per_s"] for k in ks], "o-")
    a2.set_xlabel("draft length k")
    a2.set_ylabel("tokens/s (loopback)")
    fig.suptitle("Token speculation: int8 ONNX drafter, torch target")
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "bench-spec.png", dpi=110)
    plt.close(fig)
    print(f"plot: {out / 'bench-spec.png'}")
