"""``tandem bench spec --cloud-engine vllm``: token speculation against a cloud node on vLLM.

The cloud runs SmolLM2-135M-Instruct in vLLM as its own process (``.venv-vllm``); the edge side
runs here with the int8 ONNX export of the same model (same tokenizer, so plain token
speculation). Every configuration runs ``repeats`` times, interleaved; each figure is the median
over repeats with its range. Measured in one run:

- ``greedy_match``: speculation's output equals vLLM's own greedy generation (per prompt).
- ``cloud_ms_per_token_ratio``: vLLM time per generated token, speculation / vLLM alone (one
  request at a time; the time each request spent in vLLM, as the node measures it).
- ``server_throughput_gain_8``: tokens/s to 8 concurrent speculating sessions / to 8 concurrent
  cloud-only clients (vLLM's continuous batching). The 8 drafters run in this process, on the
  same 2 cores as vLLM.
- ``round_ms_vs_context``: a verify round's ms against the context length, reading vLLM's prefix
  cache (the node's default) and rescoring the context (``--no-prefix-reuse``), with the context
  where speculation stops paying (the cost model's switch to cloud-only) for each.
- sampled verification: the chi-square fit of the first emitted token to p, and a verifier that
  keeps every draft as the negative control.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from tqdm import tqdm

from models.sampling import SamplingParams
from node_runtime.serving import aio_channel
from tandem import vllm_support as vs
from tandem.bench_spec_vllm_report import RATIO_TARGET, plot_report, print_report
from tandem.repeats import MIN_REPEATS, Spread, interleaved, paired_ratios
from tandem.report import write_json
from tandem.spec_rounds import RecordingStub, RoundRecord, acceptance_figures, records
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

K = 4  # draft length, fixed before measuring (SpecSettings' default starting k)
MAX_NEW = 48  # tokens per request at the most
SESSIONS = 8  # concurrent sessions / clients behind server_throughput_gain_8
CONTEXTS = (64, 256, 512, 1024, 1536)  # context lengths of the round-cost curve
CURVE_ROUNDS = 4  # rounds per session on the curve; the first (cold cache) is not counted


@dataclass(frozen=True)
class VllmBenchConfig:
    """Sizes of one run."""

    quick: bool = False  # a few minutes: fewer prompts, contexts and samples
    out_dir: Path = Path("runs/vllm-bench")  # plot and node logs
    repeats: int = MIN_REPEATS  # runs of every configuration, interleaved
    k: int = K  # draft length

    @property
    def problems(self) -> int:
        return 2 if self.quick else 6

    @property
    def stat_rounds(self) -> int:
        return 150 if self.quick else 600

    @property
    def contexts(self) -> tuple[int, ...]:
        return (64, 512) if self.quick else CONTEXTS


@dataclass
class Run:
    """One configuration's run: outputs, time and what the cloud node counted meanwhile."""

    outputs: list[list[int]]
    wall_s: float
    cloud_s: float  # vLLM time charged to the run's requests (the node's verify/generate seconds)
    rounds: list[RoundRecord]
    cloud_cpu_s: float = 0.0  # CPU seconds of the cloud's processes (node, vLLM engine, workers)

    @property
    def tokens(self) -> int:
        return sum(len(o) for o in self.outputs)


def _picker(address: str, sink: list[tuple[list[int], int]]) -> Any:
    """A cloud picker over one address whose stub records each round's draft and verdict."""
    channel: list[Any] = []

    async def pick(tried: Sequence[str]) -> tuple[str, pb_grpc.CloudStub] | None:
        if address in tried:
            return None
        if not channel:
            channel.append(aio_channel(address))
        stub = RecordingStub(pb_grpc.CloudStub(channel[0]), sink)
        return address, cast(pb_grpc.CloudStub, stub)

    pick.channel = channel  # type: ignore[attr-defined]
    return pick


async def _speculate(address: str, spec: Any, prompts: list[list[int]], k: int, eos: int) -> Run:
    from edge_node.spec_types import SpecSettings
    from node_runtime.kinds import KPolicy

    before = await vs.metrics(address)
    t0 = time.perf_counter()
    settings = SpecSettings(max_new=MAX_NEW, eos_id=eos, k=k, k_policy=KPolicy.FIXED)

    async def one(p: list[int]) -> tuple[list[int], list[RoundRecord]]:
        sink: list[tuple[list[int], int]] = []
        pick = _picker(address, sink)
        try:
            r = await spec.run(p, SamplingParams(0.0), settings, pick)
        finally:
            for ch in pick.channel:
                await ch.close()
        return r.tokens, records(sink, settings.stops)

    done = []
    for p in prompts:
        done.append(await one(p))
    wall = time.perf_counter() - t0
    after = await vs.metrics(address)
    cloud = after["verify_model_s"] - before["verify_model_s"]
    return Run([o for o, _ in done], wall, cloud, [r for _, rs in done for r in rs])


async def _speculate_together(
    address: str, spec: Any, prompts: list[list[int]], k: int, eos: int
) -> Run:
    """``SESSIONS`` requests at once, each on its own stream."""
    from edge_node.spec_types import SpecSettings
    from node_runtime.kinds import KPolicy

    settings = SpecSettings(max_new=MAX_NEW, eos_id=eos, k=k, k_policy=KPolicy.FIXED)
    picks = [_picker(address, []) for _ in range(SESSIONS)]
    t0 = time.perf_counter()
    try:
        got = await asyncio.gather(
            *(
                spec.run(prompts[i % len(prompts)], SamplingParams(0.0), settings, picks[i])
                for i in range(SESSIONS)
            )
        )
    finally:
        for pick in picks:
            for ch in pick.channel:
                await ch.close()
    return Run([r.tokens for r in got], time.perf_counter() - t0, 0.0, [])


async def _cloud_only(address: str, prompts: list[list[int]], together: bool = False) -> Run:
    before = await vs.metrics(address)
    t0 = time.perf_counter()
    if together:
        picked = [prompts[i % len(prompts)] for i in range(SESSIONS)]
        replies = await asyncio.gather(*(vs.generate(address, p, MAX_NEW) for p in picked))
    else:
        replies = [await vs.generate(address, p, MAX_NEW) for p in prompts]
    wall = time.perf_counter() - t0
    after = await vs.metrics(address)
    cloud = after["generate_model_s"] - before["generate_model_s"]
    return Run([list(r.tokens) for r in replies], wall, cloud, [])


async def _round_ms(address: str, length: int, k: int, seed: int) -> float:
    """Median ms of a greedy verify round over a ``length``-token context, cache warm."""
    base = [(seed * 7919 + 31 * i) % 40000 + 1000 for i in range(length + k * CURVE_ROUNDS + 8)]
    ms: list[float] = []
    async with aio_channel(address) as ch:
        call = pb_grpc.CloudStub(ch).Speculate(timeout=300)
        sid = f"curve-{length}-{seed}"
        await call.write(pb.SpecRequest(open=pb.OpenSession(session_id=sid, prompt=base[:length])))
        pos = (await call.read()).opened.position
        for r in range(CURVE_ROUNDS):
            draft = base[pos : pos + k]
            v = pb.VerifyRequest(session_id=sid, round_id=r + 1, base_position=pos, draft=draft)
            await call.write(pb.SpecRequest(verify=v))
            reply = (await call.read()).verdict
            pos = reply.position
            if r:
                ms.append(reply.model_ms)
        await call.done_writing()
    return statistics.median(ms)


async def _decode_ms(address: str, length: int, seed: int) -> float:
    """vLLM's ms per generated token after a ``length``-token prompt (its prefill excluded)."""
    prompt = [(seed * 7919 + 31 * i) % 40000 + 1000 for i in range(length)]
    await vs.generate(address, prompt, 1)  # the prompt into the prefix cache
    one = (await vs.generate(address, prompt, 1)).model_ms
    many = await vs.generate(address, prompt, 17)
    return (many.model_ms - one) / max(len(many.tokens) - 1, 1)


def _curve(reuse: str, rescore: str, cfg: VllmBenchConfig) -> dict[str, list[list[float]]]:
    repeat = {"round": 0, "decode": 0}

    def point(address: str, kind: str) -> Any:
        def run() -> list[float]:
            # contexts new to vLLM in every run: a repeat never reads an earlier one's cache
            repeat[kind] += 1
            out = []
            for i, n in enumerate(cfg.contexts):
                seed = 100 * repeat[kind] + i
                if kind == "decode":
                    out.append(asyncio.run(_decode_ms(address, n, seed)))
                else:
                    out.append(asyncio.run(_round_ms(address, n, cfg.k, seed)))
            return out

        return run

    return interleaved(
        {
            "reuse": point(reuse, "round"),
            "rescore": point(rescore, "round"),
            "decode": point(reuse, "decode"),
        },
        cfg.repeats,
        _progress("round cost vs context", 3 * cfg.repeats),
    )


def _progress(label: str, total: int) -> Any:
    bar = tqdm(total=total, desc=label, unit="run")
    return lambda name, rep: (bar.set_postfix_str(f"{name} #{rep + 1}"), bar.update(1))


def _spread(values: Sequence[float]) -> dict[str, Any]:
    return Spread.of([float(v) for v in values]).as_dict()


def _switch(contexts: Sequence[int], spec_ms: Sequence[float], alone_ms: Sequence[float]) -> Any:
    """The first context where speculation's vLLM ms per token exceeds vLLM alone's
    (interpolated between measured points); None when it never does on the curve."""
    prev = None
    for n, s, a in zip(contexts, spec_ms, alone_ms, strict=True):
        gap = s - a
        if gap > 0:
            if prev is None:
                return n
            n0, g0 = prev
            return round(n0 + (n - n0) * (-g0) / (gap - g0))
        prev = (n, gap)
    return None


def _statistics(address: str, tok: Any, cfg: VllmBenchConfig) -> dict[str, Any]:
    prompt = vs.prompt_ids(tok, vs.QUESTIONS[5])
    out: dict[str, Any] = {}
    for params in (SamplingParams(0.8, 0.95), SamplingParams(1.0)):
        p = vs.target_first(prompt, params)
        q = vs.skewed_q(p)
        pairs = asyncio.run(vs.first_tokens(address, prompt, params, q, cfg.stat_rounds, seed=7))
        real = vs.fit_pvalue([e for _, e in pairs], p)
        control = vs.fit_pvalue([x for x, _ in pairs], p)
        out[f"T={params.temperature:g},top_p={params.top_p:g}"] = {
            "rounds": len(pairs),
            "pvalue": real,
            "passes": real > vs.ALPHA,
            "negative_control_pvalue": control,
            "negative_control_rejected": control < vs.ALPHA,
            "path": "prompt logprobs" if params.temperature == 1.0 else "per-position requests",
        }
    return out


def run_vllm_bench(cfg: VllmBenchConfig) -> dict[str, Any]:
    """Every measurement; prints the table, writes the plot; the JSON report."""
    from edge_node.speculation import Speculator
    from models.loader import load_lm

    reason = vs.missing(drafter=True)
    if reason:
        raise SystemExit(f"bench spec --cloud-engine vllm: {reason}")
    drafter, tok = load_lm(f"onnx:{vs.ONNX_DIR}")

    def prompts(tag: str, n: int) -> list[list[int]]:
        """n questions after a system turn naming ``tag``: every run gets prompts of its own, so
        no run finds its contexts in vLLM's prefix cache from an earlier run."""
        system = f"You are a helpful assistant. Conversation {tag}."
        return [vs.prompt_ids(tok, q, system) for q in vs.QUESTIONS[:n]]

    runs = {"spec": 0, "alone": 0, "spec8": 0, "alone8": 0}

    def tick(name: str) -> int:
        """The repeat this run of ``name`` is (1, 2, ...)."""
        runs[name] += 1
        return runs[name]

    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    with vs.VllmCloud(cfg.out_dir) as cloud, vs.VllmCloud(cfg.out_dir, "--no-prefix-reuse") as old:
        spec = Speculator(drafter, tokenizer=tok)
        a, eos = cloud.address, tok.eos_id
        pid = cloud.popen.pid if cloud.popen is not None else 0

        def cpu(work: Callable[[], Coroutine[Any, Any, Run]]) -> Callable[[], Run]:
            def run() -> Run:
                c0 = vs.tree_cpu_s(pid)
                out = asyncio.run(work())
                out.cloud_cpu_s = vs.tree_cpu_s(pid) - c0
                return out

            return run

        n, n8 = cfg.problems, SESSIONS
        # speculation and cloud-only of one repeat share prompts (greedy_match compares them);
        # speculation runs first, so its contexts are new to vLLM
        versus = interleaved(
            {
                "speculation": cpu(
                    lambda: _speculate(a, spec, prompts(f"r{tick('spec')}", n), cfg.k, eos)
                ),
                "cloud_only": cpu(lambda: _cloud_only(a, prompts(f"r{tick('alone')}", n))),
                "speculation_8": cpu(
                    lambda: _speculate_together(
                        a, spec, prompts(f"s8-{tick('spec8')}", n8), cfg.k, eos
                    )
                ),
                "cloud_only_8": cpu(
                    lambda: _cloud_only(a, prompts(f"c8-{tick('alone8')}", n8), together=True)
                ),
            },
            cfg.repeats,
            _progress("speculation vs vLLM alone", 4 * cfg.repeats),
        )
        curve = _curve(a, old.address, cfg)
        stats = _statistics(a, tok, cfg)
        spec.pool.shutdown()
    return _report(cfg, versus, curve, stats)


def _report(
    cfg: VllmBenchConfig,
    versus: dict[str, list[Run]],
    curve: dict[str, list[list[float]]],
    stats: dict[str, Any],
) -> dict[str, Any]:
    spec, alone = versus["speculation"], versus["cloud_only"]
    match = [
        sum(x == y for x, y in zip(s.outputs, c.outputs, strict=True)) / len(s.outputs)
        for s, c in zip(spec, alone, strict=True)
    ]
    spec_ms = [1e3 * r.cloud_s / r.tokens for r in spec]
    alone_ms = [1e3 * r.cloud_s / r.tokens for r in alone]
    ratio = paired_ratios(spec_ms, alone_ms)
    cpu_ratio = paired_ratios(
        [r.cloud_cpu_s / r.tokens for r in spec], [r.cloud_cpu_s / r.tokens for r in alone]
    )
    tps8 = [r.tokens / r.wall_s for r in versus["speculation_8"]]
    alone8 = [r.tokens / r.wall_s for r in versus["cloud_only_8"]]
    cpu8 = [r.tokens / r.cloud_cpu_s for r in versus["speculation_8"]]
    cpu_alone8 = [r.tokens / r.cloud_cpu_s for r in versus["cloud_only_8"]]
    acc = acceptance_figures([r for run in spec for r in run.rounds], cfg.k)
    per_round = acc["mean_accepted_length"] or 1.0  # tokens a round adds, its own token included
    med = {k: [statistics.median(col) for col in zip(*v, strict=True)] for k, v in curve.items()}
    per_token = {k: [ms / per_round for ms in med[k]] for k in ("reuse", "rescore")}
    report: dict[str, Any] = {
        "engine": "vllm",
        "target": "SmolLM2-135M-Instruct (vLLM, float32, CPU)",
        "drafter": "SmolLM2-135M-Instruct int8 ONNX (edge, this process)",
        "k": cfg.k,
        "greedy_match": _spread(match),
        "cloud_ms_per_token": {"speculation": _spread(spec_ms), "vllm_alone": _spread(alone_ms)},
        "cloud_ms_per_token_ratio": _spread(ratio),
        "cloud_ms_per_token_ratio_target": RATIO_TARGET,
        # CPU seconds of the cloud's processes per token, speculation / alone (node + vLLM)
        "cloud_cpu_per_token_ratio": _spread(cpu_ratio),
        "server_tokens_per_s_8": {"speculation": _spread(tps8), "cloud_only": _spread(alone8)},
        "server_throughput_gain_8": _spread(paired_ratios(tps8, alone8)),
        "server_tokens_per_cpu_s_8": {
            "speculation": _spread(cpu8),
            "cloud_only": _spread(cpu_alone8),
        },
        "server_cpu_efficiency_gain_8": _spread(paired_ratios(cpu8, cpu_alone8)),
        "mean_accepted_length": acc["mean_accepted_length"],
        "acceptance": acc,
        "round_ms_vs_context": {
            "contexts": list(cfg.contexts),
            "prefix_reuse_ms": [_spread(c) for c in zip(*curve["reuse"], strict=True)],
            "rescore_ms": [_spread(c) for c in zip(*curve["rescore"], strict=True)],
            "vllm_alone_ms_per_token": [_spread(c) for c in zip(*curve["decode"], strict=True)],
            "switch_context_prefix_reuse": _switch(cfg.contexts, per_token["reuse"], med["decode"]),
            "switch_context_rescore": _switch(cfg.contexts, per_token["rescore"], med["decode"]),
            "tokens_per_round": per_round,
        },
        "sampled_statistics": stats,
        "config": {"quick": cfg.quick, "problems": cfg.problems, "repeats": cfg.repeats},
    }
    print_report(report)
    plot_report(report, cfg.out_dir / "vllm-bench.png")
    return report


def add_parser(subparsers: Any) -> None:
    """``--cloud-engine`` on the existing ``tandem bench spec``."""
    from tandem.cli import bench_subcommands

    bsub = bench_subcommands(subparsers)
    spec = bsub.choices["spec"]
    spec.add_argument(
        "--cloud-engine",
        choices=("tandem", "vllm"),
        default="tandem",
        help="the cloud's engine: tandem (the bundled models) or vllm (SmolLM2 in vLLM; needs "
        "scripts/setup-vllm, docs/vllm.md)",
    )
    fallback = spec.get_default("fn")

    def handler(args: argparse.Namespace) -> int:
        if args.cloud_engine != "vllm":
            return int(fallback(args))
        out = Path(args.out) if args.out != "runs/bench-spec" else Path("runs/vllm-bench")
        report = run_vllm_bench(VllmBenchConfig(quick=args.quick, out_dir=out))
        write_json(args.json, report)
        return 0

    spec.set_defaults(fn=handler)
