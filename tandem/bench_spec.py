"""``tandem bench spec``: token speculation measured in one run, as ratios.

The clouds run as their own processes (as in deployment); the edge side runs in this process with
the int8 ONNX drafter; the verify load for ``batch_gain_8`` comes from another process
(``tandem.loadgen``). Every configuration runs ``repeats`` times, interleaved, and every figure
is the median over its repeats with its range (``tandem.repeats``). Every figure is computed from
what this run measured.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
from tqdm import tqdm

from cloud_node.engine import EngineConfig, Round, VerifyEngine
from edge_node.clouds import CloudDirectory
from edge_node.speculation import CloudPicker, SpecSettings, Speculator
from models import task
from models.base import CausalLM
from models.generate import generate
from models.loader import load_lm
from models.sampling import SamplingParams
from models.speculative import Proposal
from node_runtime.kinds import KPolicy
from node_runtime.serving import aio_channel
from tandem import loadgen
from tandem.cluster import LocalCluster
from tandem.drafter_speed import drafter_backends
from tandem.repeats import MIN_REPEATS, Spread, interleaved, paired_ratios, spreads
from tandem.spec_figures import build_report, print_and_plot
from tandem.spec_rounds import RecordingStub, RoundRecord, acceptance_figures, records, unclipped
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

K_SWEEP = (1, 2, 3, 4, 6, 8)
MAX_NEW = 48  # tokens a request generates at the most
LOAD_K = 4  # draft length of the replayed verify load
LOAD_SESSIONS = 8  # concurrent verify sessions behind batch_gain_8


@dataclass(frozen=True)
class SpecBenchConfig:
    """Sizes of one benchmark run."""

    quick: bool = False  # a small run that finishes in about a minute
    out_dir: Path = Path("runs/bench-spec")  # plot, node logs and the replayed drafts
    target: str = "target"  # cloud model spec
    drafter: str = "drafter-int8"  # edge model spec (int8 ONNX)
    repeats: int = MIN_REPEATS  # runs of every configuration, interleaved

    @property
    def problems(self) -> int:
        """Held-out problems speculation and cloud-only run on."""
        return 24 if self.quick else 100

    @property
    def idle_seconds(self) -> float:
        """Length of each idle pass (the cloud's background CPU, for scale)."""
        return 0.5 if self.quick else 2.0

    @property
    def sweep_problems(self) -> int:
        """Problems of each k in the draft-length sweep."""
        return 6 if self.quick else 100

    @property
    def ks(self) -> tuple[int, ...]:
        """Draft lengths of the sweep."""
        return (2, 4, 6) if self.quick else K_SWEEP

    @property
    def batch_seconds(self) -> float:
        """Counting window of each verify-load measurement."""
        return 1.5 if self.quick else 5.0

    @property
    def engine_seconds(self) -> float:
        """Length of each in-process verify-engine measurement."""
        return 1.0 if self.quick else 4.0

    @property
    def drafter_problems(self) -> int:
        """Problems the drafter backends are timed on."""
        return 10 if self.quick else 50


def _prompts(tok: Any, n: int) -> list[list[int]]:
    return [[tok.bos_id, *tok.encode(p.question)] for p in task.generate(n, task.HELDOUT_SEED)]


def cpu_seconds_from_stat(stat: str, ticks_per_s: float) -> float:
    """User + system CPU seconds of a process, all its threads, from its /proc/PID/stat line.

    The command name (field 2) may hold spaces and parentheses, so fields are counted after its
    last ')': utime and stime are fields 14 and 15.
    """
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / ticks_per_s


def process_cpu_s(pid: int) -> float:
    """CPU seconds process ``pid`` has used (Linux /proc)."""
    return cpu_seconds_from_stat(Path(f"/proc/{pid}/stat").read_text(), os.sysconf("SC_CLK_TCK"))


@dataclass
class Run:
    """One pass over a prompt set, in one mode, and what the cloud process spent on it."""

    outputs: list[list[int]]  # the reply of each prompt
    wall_s: float  # wall time of the whole pass
    cloud_cpu_s: float  # CPU seconds of the cloud process over the pass (every thread)
    cloud_model_cpu_s: float  # CPU seconds the cloud reported for its model calls
    edge_model_s: float = 0.0  # drafter time (speculation only)
    rounds: list[RoundRecord] = field(default_factory=list)  # verify rounds, in request order
    account: dict[str, int] = field(default_factory=dict)  # the edge accounts' totals

    @property
    def tokens(self) -> int:
        """Tokens generated over the pass."""
        return sum(len(o) for o in self.outputs)

    def per_token(self) -> dict[str, float]:
        """Cloud CPU and throughput per generated token."""
        n = max(self.tokens, 1)
        return {
            "tokens_per_s": self.tokens / self.wall_s,
            "cloud_cpu_ms_per_token": 1e3 * self.cloud_cpu_s / n,
            "cloud_model_cpu_ms_per_token": 1e3 * self.cloud_model_cpu_s / n,
            "cloud_other_cpu_ms_per_token": 1e3 * (self.cloud_cpu_s - self.cloud_model_cpu_s) / n,
            "edge_ms_per_token": 1e3 * self.edge_model_s / n,
        }


def _recording(clouds: CloudDirectory, sink: list[tuple[list[int], int]]) -> CloudPicker:
    async def pick(tried: Sequence[str]) -> tuple[str, pb_grpc.CloudStub] | None:
        got = await clouds.pick(tried)
        if got is None:
            return None
        return got[0], cast(pb_grpc.CloudStub, RecordingStub(got[1], sink))

    return pick


async def _speculate(address: str, drafter: CausalLM, prompts: list[list[int]], k: int) -> Run:
    eos = task.WordTokenizer().eos_id
    clouds = CloudDirectory("bench-edge", static=[address])
    spec = Speculator(drafter)
    run = Run([], 0.0, 0.0, 0.0)
    run.account = dict.fromkeys(("verify_rounds", "drafted_tokens", "accepted_tokens"), 0)
    try:
        for p in prompts:
            sink: list[tuple[list[int], int]] = []
            s = SpecSettings(max_new=MAX_NEW, eos_id=eos, k=k, k_policy=KPolicy.FIXED)
            r = await spec.run(p, SamplingParams(0.0), s, _recording(clouds, sink))
            run.outputs.append(r.tokens)
            run.edge_model_s += r.account.edge_model_s
            run.cloud_model_cpu_s += r.account.cloud_model_cpu_s
            run.rounds += records(sink, s.stops)
            for key in run.account:
                run.account[key] += int(getattr(r.account, key))
    finally:
        await clouds.close()
        spec.pool.shutdown()
    return run


async def _cloud_only(address: str, prompts: list[list[int]]) -> Run:
    run = Run([], 0.0, 0.0, 0.0)
    async with aio_channel(address) as ch:
        stub = pb_grpc.CloudStub(ch)
        for p in prompts:
            req = pb.GenerateRequest(prompt=p, max_new_tokens=MAX_NEW)
            r = await stub.Generate(req, timeout=60)
            run.outputs.append(list(r.tokens))
            run.cloud_model_cpu_s += r.model_cpu_s
    return run


def _idle(seconds: float) -> Run:
    time.sleep(seconds)
    return Run([], 0.0, 0.0, 0.0)


def measured(pid: int, work: Callable[[], Run]) -> Run:
    """Run ``work``, timing it and the CPU the cloud process ``pid`` spends meanwhile: the
    model, verification and sampling, the servicer and gRPC, everything the cloud does."""
    c0, t0 = process_cpu_s(pid), time.perf_counter()
    run = work()
    run.wall_s, run.cloud_cpu_s = time.perf_counter() - t0, process_cpu_s(pid) - c0
    return run


def run_figures(run: Run, k: int) -> dict[str, Any]:
    """Per-token costs and acceptance of a speculation run; acceptance over every round (only
    positions before a stop) and over the rounds theory describes (``unclipped``)."""
    whole = acceptance_figures(run.rounds, k)
    clean = acceptance_figures(unclipped(run.rounds, k), k)
    a = run.account
    agrees = (len(run.rounds), sum(r.positions for r in run.rounds)) == (
        a["verify_rounds"],
        a["drafted_tokens"],
    ) and sum(r.accepted for r in run.rounds) == a["accepted_tokens"]
    return {
        **run.per_token(),
        "acceptance_rate": whole["acceptance_rate"],
        "per_token_acceptance": whole["per_token_acceptance"],
        "mean_accepted_length": whole["mean_accepted_length"],
        "rounds": whole["rounds"],
        "unclipped_rounds": clean["rounds"],
        "unclipped_per_token_acceptance": clean["per_token_acceptance"],
        "unclipped_mean_accepted_length": clean["mean_accepted_length"],
        "theory_accepted_length": clean["theory_accepted_length"],
        "survival_all": whole["survival"],
        "survival": clean["survival"],
        "theory_survival": clean["theory_survival"],
        "account_agrees": agrees,
    }


def _median_list(lists: Sequence[Sequence[float | None] | None]) -> list[float | None]:
    """Position-wise median of lists of one length (None entries skipped)."""
    rows = [x for x in lists if x is not None]
    if not rows:
        return []
    cols = zip(*rows, strict=True)
    return [statistics.median(v) if (v := [x for x in c if x is not None]) else None for c in cols]


def _summary(figs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Spreads of a configuration's numeric figures, and its survival lists position-wise."""
    numeric = [
        {
            k: float(v)
            for k, v in f.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        for f in figs
    ]
    out: dict[str, Any] = {"spread": spreads(numeric)}
    for key in ("survival", "survival_all", "theory_survival"):
        out[key] = _median_list([f[key] for f in figs])
    return out


class _Progress:
    """A progress bar over one interleaved phase."""

    def __init__(self, label: str, total: int) -> None:
        self.bar = tqdm(total=total, desc=label, leave=False)

    def __call__(self, name: str, repeat: int) -> None:
        self.bar.set_postfix_str(f"{name} #{repeat + 1}")
        self.bar.update(1)


def _spec_config(
    pid: int, address: str, drafter: CausalLM, prompts: list[list[int]], k: int
) -> Callable[[], Run]:
    return lambda: measured(pid, lambda: asyncio.run(_speculate(address, drafter, prompts, k)))


def _sweep(
    cfg: SpecBenchConfig, pid: int, address: str, drafter: CausalLM, prompts: list[list[int]]
) -> dict[int, dict[str, Any]]:
    """Each k of the sweep over the same prompts, the ks interleaved over the repeats."""
    sub = prompts[: cfg.sweep_problems]
    configs = {str(k): _spec_config(pid, address, drafter, sub, k) for k in cfg.ks}
    runs = interleaved(configs, cfg.repeats, _Progress("k sweep", len(configs) * cfg.repeats))
    return {k: _summary([run_figures(r, k) for r in runs[str(k)]]) for k in cfg.ks}


async def _engine_load(
    lm: CausalLM, refs: list[tuple[list[int], list[int]]], max_batch: int, seconds: float
) -> float:
    """Verify rounds per second of the cloud's verify engine itself, 8 sessions, no transport.

    The same replayed drafts as the gRPC load (every draft kept); the sessions submit to a real
    VerifyEngine in this process, so the figure is the verifier's throughput without gRPC.
    """
    engine = VerifyEngine(lm, EngineConfig(max_batch=max_batch))
    engine.start()
    stop_at = time.perf_counter() + seconds
    done = [0]

    async def one(i: int) -> None:
        n = 0
        while time.perf_counter() < stop_at:
            prompt, cont = refs[(i + n * LOAD_SESSIONS) % len(refs)]
            sid = f"engine-{i}-{n}"
            n += 1
            engine.open(sid, prompt, SamplingParams(0.0))
            seq, rid = list(prompt), 0
            while (
                len(seq) - len(prompt) + LOAD_K + 1 <= len(cont) and time.perf_counter() < stop_at
            ):
                rid += 1
                base = len(seq)
                draft = cont[base - len(prompt) : base - len(prompt) + LOAD_K]
                r = await engine.submit(Round(sid, rid, base, Proposal(np.asarray(draft), None)))
                seq += [*draft[: r.verdict.accepted], r.verdict.next_token]
                done[0] += 1
            engine.close(sid)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(LOAD_SESSIONS)))
    rate = done[0] / (time.perf_counter() - t0)
    await engine.stop()
    return rate


def _spread(values: Sequence[float | None]) -> Spread | None:
    vs = [float(v) for v in values if v is not None]
    return Spread.of(vs) if vs else None


ACCEPTANCE = (
    "mean_accepted_length",
    "acceptance_rate",
    "per_token_acceptance",
    "unclipped_mean_accepted_length",
    "unclipped_per_token_acceptance",
    "theory_accepted_length",
)
CLOUD_CPU = (
    "cloud_cpu_ms_per_token",
    "cloud_model_cpu_ms_per_token",
    "cloud_other_cpu_ms_per_token",
)
AGREEMENTS = ("onnx_fp32_agreement", "onnx_int8_agreement", "int8_vs_fp32_agreement")


def _speculation_figures(
    refs: Sequence[tuple[list[int], list[int]]],
    spec: list[Run],
    sf: list[dict[str, Any]],
    cloud: list[Run],
) -> dict[str, Spread | None]:
    """Losslessness, acceptance and cloud cost: speculation (runs ``spec``, their figures ``sf``)
    against cloud-only, repeat by repeat."""
    co = [r.per_token() for r in cloud]
    want = [ref for _, ref in refs]
    same = [float(np.mean([o == w for o, w in zip(r.outputs, want, strict=True)])) for r in spec]
    f: dict[str, Spread | None] = {"greedy_match": _spread(same)}
    f.update({key: _spread([x[key] for x in sf]) for key in ACCEPTANCE})

    def ratio(key: str) -> Spread | None:
        return _spread(paired_ratios([x[key] for x in sf], [c[key] for c in co]))

    f["cloud_compute_ratio"] = ratio("cloud_cpu_ms_per_token")
    f["cloud_model_compute_ratio"] = ratio("cloud_model_cpu_ms_per_token")
    f["tokens_per_s_ratio"] = ratio("tokens_per_s")
    for key in CLOUD_CPU:
        f[f"speculation_{key}"] = _spread([x[key] for x in sf])
        f[f"cloud_only_{key}"] = _spread([c[key] for c in co])
    return f


def _throughput_figures(
    load: dict[str, list[dict[str, Any]]], engine: dict[str, list[float]], backends: dict[str, Any]
) -> dict[str, Spread | None]:
    """Batching through gRPC and in the engine, and the drafter's three backends."""
    rps = {name: [m["rounds_per_s"] for m in runs] for name, runs in load.items()}
    ms: dict[str, list[float]] = backends["ms"]
    return {
        "batch_gain_8": _spread(paired_ratios(rps["batched"], rps["one_at_a_time"])),
        "grpc_rounds_per_s_batched": _spread(rps["batched"]),
        "grpc_rounds_per_s_one_at_a_time": _spread(rps["one_at_a_time"]),
        "mean_batch_size_8": _spread([m["mean_batch_size"] for m in load["batched"]]),
        "load_client_cpu_share": _spread([m.get("client_cpu_share") for m in load["batched"]]),
        "overhead_ms_p50": _spread([m["overhead_ms_p50"] for m in load["single_session"]]),
        "overhead_ms_p95": _spread([m["overhead_ms_p95"] for m in load["single_session"]]),
        "batch_gain_8_engine": _spread(paired_ratios(engine["batched"], engine["one_at_a_time"])),
        "engine_rounds_per_s_batched": _spread(engine["batched"]),
        "engine_rounds_per_s_one_at_a_time": _spread(engine["one_at_a_time"]),
        **{f"{name}_ms_per_token": _spread(v) for name, v in ms.items()},
        "onnx_fp32_speedup": _spread(paired_ratios(ms["torch_fp32"], ms["onnx_fp32"])),
        "int8_speedup": _spread(paired_ratios(ms["onnx_fp32"], ms["onnx_int8"])),
        "onnx_int8_speedup": _spread(paired_ratios(ms["torch_fp32"], ms["onnx_int8"])),
        # deterministic (greedy argmax of fixed weights): one measurement each
        **{key: Spread.of([backends[key]]) for key in AGREEMENTS},
    }


def _clouds_phase(
    cfg: SpecBenchConfig,
    drafter: CausalLM,
    prompts: list[list[int]],
    refs_file: Path,
) -> tuple[dict[int, dict[str, Any]], int, dict[str, list[Run]], dict[str, list[dict[str, Any]]]]:
    """Everything measured against cloud processes: the k sweep, speculation against cloud-only
    at the best k, and the verify load from another process on a batched and a one-at-a-time
    cloud."""
    with LocalCluster(cfg.out_dir / "nodes") as cluster:
        cloud = cluster.start("cloud", "cloud-batched", "--model", cfg.target)
        solo = cluster.start("cloud", "cloud-solo", "--model", cfg.target, "--max-batch", "1")
        pid, address = cloud.popen.pid, cloud.address
        sweep = _sweep(cfg, pid, address, drafter, prompts)
        k = max(sweep, key=lambda k: sweep[k]["spread"]["tokens_per_s"].median)
        versus = interleaved(
            {
                "speculation": _spec_config(pid, address, drafter, prompts, k),
                "cloud_only": lambda: measured(
                    pid, lambda: asyncio.run(_cloud_only(address, prompts))
                ),
                "idle": lambda: measured(pid, lambda: _idle(cfg.idle_seconds)),
            },
            cfg.repeats,
            _Progress("speculation vs cloud-only", 3 * cfg.repeats),
        )

        def load(addr: str, sessions: int) -> Callable[[], dict[str, Any]]:
            return lambda: loadgen.measure(addr, refs_file, sessions, LOAD_K, cfg.batch_seconds)

        grpc_load = interleaved(
            {
                "batched": load(address, LOAD_SESSIONS),
                "one_at_a_time": load(solo.address, LOAD_SESSIONS),
                "single_session": load(address, 1),
            },
            cfg.repeats,
            _Progress("verify load (other process)", 3 * cfg.repeats),
        )
    return sweep, k, versus, grpc_load


def run_spec_bench(cfg: SpecBenchConfig) -> dict[str, Any]:
    """Run every measurement; print the table; write the plot; return the JSON report."""
    target, tok = load_lm(cfg.target)
    drafter, _ = load_lm(cfg.drafter)
    prompts = _prompts(tok, cfg.problems)
    refs = [(p, generate(target, p, SamplingParams(0.0), MAX_NEW, tok.eos_id)) for p in prompts]
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    refs_file = cfg.out_dir / "verify-refs.json"
    refs_file.write_text(json.dumps(refs))
    sweep, k, versus, grpc_load = _clouds_phase(cfg, drafter, prompts, refs_file)
    s = cfg.engine_seconds
    engine = interleaved(
        {
            "batched": lambda: asyncio.run(_engine_load(target, refs, 16, s)),
            "one_at_a_time": lambda: asyncio.run(_engine_load(target, refs, 1, s)),
        },
        cfg.repeats,
        _Progress("verify engine (in process)", 2 * cfg.repeats),
    )
    backends = drafter_backends(prompts[: cfg.drafter_problems], cfg.repeats)
    spec_runs = [run_figures(r, k) for r in versus["speculation"]]
    figures = {
        **_speculation_figures(refs, versus["speculation"], spec_runs, versus["cloud_only"]),
        "cloud_idle_cpu_share": _spread([r.cloud_cpu_s / r.wall_s for r in versus["idle"]]),
        **_throughput_figures(grpc_load, engine, backends),
    }
    report = build_report(figures, sweep, k, _summary(spec_runs))
    report["config"] = {
        "quick": cfg.quick,
        "problems": cfg.problems,
        "repeats": cfg.repeats,
        "load_sessions": LOAD_SESSIONS,
        "load_k": LOAD_K,
        "max_new": MAX_NEW,
    }
    report["account_agrees"] = all(x["account_agrees"] for x in spec_runs)
    print_and_plot(report, cfg.out_dir)
    return report
