"""``tandem simulate validate``: scenarios run live, then simulated on the same workload.

Live means real processes: a cloud node process (``--device`` the cloud profile, the bundled
target), the link emulator in front of it, and a load process whose N edge devices each run the
edge's own speculation code (``edge_node.speculation.Speculator``) over their own emulated
drafter (the bundled int8 drafter padded to the edge profile), or send cloud-only requests to
the cloud's Generate. Requests arrive by a seeded Poisson process per device and each device
serves its requests one after another. The live run's workload (arrival time, device, prompt
length, reply length) is then replayed by the simulator as a CSV trace, with the acceptance
curve and host overheads from calibration (problems and runs of their own, never a scenario's).

Per scenario the figure is the relative error of the simulated p50 and p95 of per-request
end-to-end latency against the live ones; scenarios run ``repeats`` times, interleaved, and the
median error over repeats is taken; the report's keys are the worst over scenarios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

MAX_NEW = 48  # tokens a request may generate (the bundled answers end near 30)
K = 4  # drafts per round, fixed (the simulator takes k as given)
VALIDATE_SEED = 2 + 80  # task.HELDOUT_SEED + 80: problems of the scenarios
CALIBRATION_SEED = 2 + 90  # problems of the overhead calibration run


@dataclass(frozen=True)
class Scenario:
    """One live-vs-simulated comparison."""

    name: str  # key in tables and JSON
    devices: int  # emulated edge devices
    mode: str  # "speculation" or "cloud-only"
    link: str  # link profile (resets off: a reset measures failover, not latency)
    rate: float  # requests per device per second (Poisson)
    seconds: float  # arrivals window
    load: str  # "idle" or "loaded": what the scenario stands for


SCENARIOS = (
    Scenario("1-edge-spec-wifi", 1, "speculation", "wifi", 0.5, 20.0, "idle"),
    Scenario("1-edge-cloud-wifi", 1, "cloud-only", "wifi", 0.5, 20.0, "idle"),
    Scenario("1-edge-spec-lte", 1, "speculation", "lte", 0.5, 20.0, "idle"),
    Scenario("4-edge-spec-5g", 4, "speculation", "5g", 0.4, 20.0, "idle"),
    Scenario("16-edge-spec-wifi", 16, "speculation", "wifi", 0.6, 20.0, "loaded"),
    Scenario("16-edge-cloud-lte", 16, "cloud-only", "lte", 0.6, 20.0, "loaded"),
)
EDGE = "rpi5/smollm2-135m-q8"
CLOUD = "a100x4/llama3-70b-bf16"


def arrivals(s: Scenario, seed: int) -> list[tuple[float, int]]:
    """(time, device) of every request of a scenario's repeat, in time order."""
    rng = random.Random(f"validate:{s.name}:{seed}")
    out = []
    for d in range(s.devices):
        t = rng.expovariate(s.rate)
        while t < s.seconds:
            out.append((t, d))
            t += rng.expovariate(s.rate)
    return sorted(out)


# ------------------------------------------------------------------ the load process (live)


async def _device(
    queue: list[tuple[float, list[int]]], mode: str, via: str, lm: Any, tok: Any, t0: float
) -> list[dict[str, float]]:
    """One emulated device serving its requests in arrival order."""
    from edge_node.clouds import CloudDirectory
    from edge_node.speculation import Hooks, SpecSettings, Speculator
    from models.sampling import SamplingParams
    from node_runtime.kinds import KPolicy
    from node_runtime.serving import aio_channel
    from tandem_wire.v1 import tandem_pb2 as pb
    from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

    out = []
    spec = Speculator(lm, tokenizer=tok) if mode == "speculation" else None
    clouds = CloudDirectory(f"validate-{id(queue)}", static=[via])
    try:
        async with aio_channel(via) as ch:
            stub = pb_grpc.CloudStub(ch)
            for at, prompt in queue:
                delay = t0 + at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                start = time.perf_counter()
                if spec is not None:
                    s = SpecSettings(
                        max_new=MAX_NEW, eos_id=tok.eos_id, k=K, k_policy=KPolicy.FIXED
                    )
                    hooks = Hooks(observe_rtt=clouds.observe_rtt)
                    r = await spec.run(prompt, SamplingParams(0.0), s, clouds.pick, hooks)
                    n, rounds = len(r.tokens), r.account.verify_rounds
                else:
                    req = pb.GenerateRequest(prompt=prompt, max_new_tokens=MAX_NEW)
                    n, rounds = len((await stub.Generate(req, timeout=300)).tokens), 0
                end = time.perf_counter()
                out.append(
                    {
                        "arrival": at,
                        "start": start - t0,
                        "end": end - t0,
                        "prompt": len(prompt),
                        "tokens": n,
                        "rounds": rounds,
                    }
                )
    finally:
        await clouds.close()
        if spec is not None:
            spec.pool.shutdown(wait=False)
    return out


async def _load(job: dict[str, Any]) -> list[dict[str, Any]]:
    from models import task
    from models.loader import load_lm
    from node_runtime.emulation import EmulatedLM
    from node_runtime.profiles import get_profile

    inner, tok = load_lm("drafter-int8")
    problems = task.generate(len(job["arrivals"]), job["seed"])
    queues: dict[int, list[tuple[float, list[int]]]] = {}
    for (at, d), p in zip(job["arrivals"], problems, strict=True):
        queues.setdefault(d, []).append((at, [tok.bos_id, *tok.encode(p.question)]))
    lms = {d: EmulatedLM(inner, get_profile(job["edge"])) for d in queues}
    t0 = time.perf_counter() + 0.5
    runs = await asyncio.gather(
        *(_device(q, job["mode"], job["via"], lms[d], tok, t0) for d, q in queues.items())
    )
    out = [{**r, "device": d} for d, rs in zip(queues, runs, strict=True) for r in rs]
    infeasible = sum(lm.stats.infeasible_calls for lm in lms.values())
    return [{**r, "edge_infeasible": infeasible} for r in sorted(out, key=lambda r: r["arrival"])]


def worker_main(argv: list[str]) -> int:
    """``python -m tandem.sim_validate JOB.json``: run one live scenario, print its records."""
    job = json.loads(Path(argv[0]).read_text())
    print(json.dumps(asyncio.run(_load(job))))
    return 0


# ------------------------------------------------------------------ live and simulated


def run_live(s: Scenario, seed: int, problems_seed: int, via: str, tmp: Path) -> list[dict]:
    """One live run of ``s`` in a load process of its own; its per-request records."""
    job = {
        "arrivals": arrivals(s, seed),
        "seed": problems_seed,
        "mode": s.mode,
        "via": via,
        "edge": EDGE,
    }
    path = tmp / f"job-{s.name}-{seed}.json"
    path.write_text(json.dumps(job))
    done = subprocess.run(
        [sys.executable, "-m", "tandem.sim_validate", str(path)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode != 0:
        raise RuntimeError(f"load process exited {done.returncode}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def simulated(s: Scenario, live: list[dict], seed: int, calib: dict[str, Any], tmp: Path) -> dict:
    """The simulator on the live run's workload (a CSV trace of it)."""
    from simulations.fleet import simulate
    from simulations.fleet.config import ArrivalKind, Arrivals, FleetConfig, SimMode
    from simulations.fleet.workload import Arrival, write_trace

    trace = tmp / f"trace-{s.name}-{seed}.csv"
    write_trace(trace, [Arrival(r["arrival"], r["device"], r["prompt"], r["tokens"]) for r in live])
    cfg = FleetConfig(
        devices=s.devices,
        clouds=1,
        edge_profile=EDGE,
        cloud_profile=CLOUD,
        link=s.link,
        link_resets=False,
        mode=SimMode(s.mode),
        k=K,
        alpha=None,
        survival=tuple(calib["survival"]),
        max_new=MAX_NEW,
        duration_s=s.seconds,
        drain_s=900,
        arrivals=Arrivals(ArrivalKind.TRACE, trace=str(trace)),
        seed=seed,
        call_overhead_ms=calib.get("call_overhead_ms", 0.0),
        edge_call_overhead_ms=calib.get("edge_call_overhead_ms", 0.0),
        message_overhead_ms=calib.get("message_overhead_ms", 0.0),
    )
    return simulate(cfg)


def percentiles(values: list[float]) -> dict[str, float]:
    """p50 and p95 by the simulator's own percentile rule."""
    from simulations.fleet.results import percentile

    return {"p50": percentile(values, 50), "p95": percentile(values, 95)}


def rel_errors(live: list[dict], sim: dict[str, Any]) -> dict[str, float]:
    """Live and simulated p50 and p95 of per-request latency, and the relative errors."""
    lv = percentiles([r["end"] - r["arrival"] for r in live])
    return {
        "live_p50_s": lv["p50"],
        "sim_p50_s": sim["latency_p50_s"],
        "live_p95_s": lv["p95"],
        "sim_p95_s": sim["latency_p95_s"],
        "rel_error_p50": abs(sim["latency_p50_s"] - lv["p50"]) / lv["p50"],
        "rel_error_p95": abs(sim["latency_p95_s"] - lv["p95"]) / lv["p95"],
        "requests": len(live),
        "edge_infeasible_calls": live[0]["edge_infeasible"] if live else 0,
    }


def fit_overheads(via: Any, calib: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """Host overheads from two loopback runs of their own problems (not a scenario's): the
    time per cloud pass a cloud-only run spends beyond the simulated one, then the time per
    message a speculation run spends beyond that. The simulator is linear in both."""
    fits = {}
    for mode, key in (("cloud-only", "call_overhead_ms"), ("speculation", "message_overhead_ms")):
        s = Scenario(f"calibration-{mode}", 1, mode, "loopback", 0.5, 20.0, "idle")
        via.set_link("loopback")
        live = run_live(s, 0, CALIBRATION_SEED, via.address, tmp)
        sim = simulated(s, live, 0, {**calib, key: 0.0}, tmp)
        excess_s = statistics.mean(r["end"] - r["arrival"] for r in live) - sim["latency_mean_s"]
        if mode == "cloud-only":  # one pass per token, and 2 messages
            per = statistics.mean(r["tokens"] for r in live)
        else:  # open + rounds, each a message each way
            per = statistics.mean(2 * (r["rounds"] + 1) for r in live)
        calib[key] = max(excess_s * 1e3 / per, 0.0)
        fits[key] = {"value_ms": calib[key], "from": s.name, "requests": len(live)}
    return fits


class _Via:
    """The link emulator in front of the cloud, reconfigured per scenario."""

    def __init__(self, upstream: str) -> None:
        from simulations.link.proxy import LinkProxy, ProxyConfig

        self.link = LinkProxy(ProxyConfig(upstream=upstream)).start_in_thread()
        self.address = self.link.address

    def set_link(self, name: str) -> None:
        from tandem.edge_cloud_grid import link_spec

        self.link.set(link_spec(name))


def run_validation(quick: bool, repeats: int, out_dir: Path, calibration: str) -> dict[str, Any]:
    """Every scenario live and simulated, repeats interleaved; the report."""
    from tqdm import tqdm

    from simulations.fleet.calibrate import calibrate
    from tandem.cluster import LocalCluster

    scenarios = [replace(s, seconds=s.seconds / 2) for s in SCENARIOS] if quick else SCENARIOS
    out_dir.mkdir(parents=True, exist_ok=True)
    calib = (
        json.loads(Path(calibration).read_text())
        if calibration
        else calibrate(
            edge_device=EDGE, cloud_device=CLOUD, problems=8 if quick else 24, k=8, reps=3
        )
    )
    t0 = time.perf_counter()
    rows: dict[str, list[dict[str, Any]]] = {s.name: [] for s in scenarios}
    bar = tqdm(total=2 + repeats * len(scenarios), desc="validate", unit="run")
    with LocalCluster(out_dir / "nodes") as cluster:
        cloud = cluster.start(
            "cloud",
            "cloud",
            "--model",
            "target",
            "--device",
            CLOUD,
            "--max-batch",
            "32",
            "--generate-batch",
            "32",
        )
        via = _Via(cloud.address)
        try:
            fits = fit_overheads(via, calib, out_dir)
            bar.update(2)
            for rep in range(repeats):
                for i, s in enumerate(scenarios):
                    via.set_link(s.link)
                    time.sleep(0.5)
                    live = run_live(s, rep, VALIDATE_SEED + 100 * rep + i, via.address, out_dir)
                    sim = simulated(s, live, rep, calib, out_dir)
                    rows[s.name].append({"repeat": rep, **rel_errors(live, sim)})
                    bar.set_postfix_str(s.name, refresh=False)
                    bar.update(1)
        finally:
            via.link.stop()
    bar.close()
    return report(scenarios, rows, calib, fits, time.perf_counter() - t0, quick)


def report(
    scenarios: Any, rows: dict[str, list[dict]], calib: dict, fits: dict, wall: float, quick: bool
) -> dict[str, Any]:
    """Per scenario the medians over repeats; the worst errors over scenarios."""
    per: dict[str, Any] = {}
    for s in scenarios:
        rs = rows[s.name]
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0] if k != "repeat"}
        per[s.name] = {"scenario": asdict(s), **med, "repeats": rs}
    worst50 = max(per.values(), key=lambda v: v["rel_error_p50"])
    worst95 = max(per.values(), key=lambda v: v["rel_error_p95"])
    return {
        "emulated": f"emulated: {EDGE} -> {CLOUD}, link emulator (live); simulated (sim)",
        "quick": quick,
        "max_rel_error_p50": worst50["rel_error_p50"],
        "max_rel_error_p50_at": worst50["scenario"]["name"],
        "max_rel_error_p95": worst95["rel_error_p95"],
        "max_rel_error_p95_at": worst95["scenario"]["name"],
        "targets": {"max_rel_error_p50": "<= 0.10", "max_rel_error_p95": "<= 0.15"},
        "met": {
            "max_rel_error_p50": worst50["rel_error_p50"] <= 0.10,
            "max_rel_error_p95": worst95["rel_error_p95"] <= 0.15,
        },
        "how": (
            "each scenario runs live (a cloud process on the bundled target padded to the cloud "
            "profile, the link emulator, N emulated edge devices running the edge's speculation "
            "code or cloud-only requests, Poisson arrivals) and then in the simulator on the "
            "same workload (the live run's arrival times, devices, prompt and reply lengths as a "
            "CSV trace); acceptance from the calibrated per-position survival, host overheads "
            "fitted on two loopback runs of other problems; per scenario the median over "
            "repeats of |sim - live| / live of the p50 and p95 of per-request latency"
        ),
        "calibration": {
            "survival": calib["survival"],
            "rounds": calib.get("rounds"),
            "seed": calib.get("seed"),
            "call_overhead_ms": calib.get("call_overhead_ms"),
            "edge_call_overhead_ms": calib.get("edge_call_overhead_ms"),
            "message_overhead_ms": calib.get("message_overhead_ms"),
            "fits": fits,
        },
        "scenarios": per,
        "wall_s": wall,
    }


def print_report(rep: dict[str, Any]) -> None:
    """The table: live and simulated p50 and p95 per scenario, with the errors."""
    print(f"simulate validate ({rep['emulated']})")
    print(
        f"{'scenario':<22} {'load':<7} {'live p50':>9} {'sim p50':>9} {'err':>6} "
        f"{'live p95':>9} {'sim p95':>9} {'err':>6}  req"
    )
    for name, v in rep["scenarios"].items():
        print(
            f"{name:<22} {v['scenario']['load']:<7} {v['live_p50_s']:>9.3f} {v['sim_p50_s']:>9.3f}"
            f" {v['rel_error_p50']:>6.3f} {v['live_p95_s']:>9.3f} {v['sim_p95_s']:>9.3f}"
            f" {v['rel_error_p95']:>6.3f}  {v['requests']:.0f}"
        )
    for key in ("max_rel_error_p50", "max_rel_error_p95"):
        ok = "met" if rep["met"][key] else "MISSED"
        print(f"{key} = {rep[key]:.3f} at {rep[key + '_at']} (target {rep['targets'][key]}): {ok}")


def plot(rep: dict[str, Any], path: Path) -> None:
    """Simulated against live p50 and p95, every scenario and repeat, with y = x and +-10%."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    lo, hi = float("inf"), 0.0
    colors = plt.get_cmap("tab10")
    for q, marker in (("p50", "o"), ("p95", "^")):
        for i, (name, v) in enumerate(rep["scenarios"].items()):
            xs = [r[f"live_{q}_s"] for r in v["repeats"]]
            ys = [r[f"sim_{q}_s"] for r in v["repeats"]]
            ax.scatter(xs, ys, marker=marker, s=22, color=colors(i), label=f"{name} {q}")
            lo, hi = min(lo, *xs, *ys), max(hi, *xs, *ys)
    line = [lo * 0.8, hi * 1.2]
    ax.plot(line, line, "k-", lw=0.8, label="sim = live")
    ax.fill_between(
        line, [x * 0.9 for x in line], [x * 1.1 for x in line], color="k", alpha=0.08, label="+-10%"
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("live latency, s (emulated devices and links)")
    ax.set_ylabel("simulated latency, s")
    ax.set_title(
        f"sim vs live per-request latency: worst p50 error {rep['max_rel_error_p50']:.3f}, "
        f"p95 {rep['max_rel_error_p95']:.3f}\n{rep['emulated']}",
        fontsize=8,
    )
    ax.legend(fontsize=6, ncol=2)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def replot(json_path: str) -> None:
    """Draw the plot of a saved report again (``--replot``)."""
    plot(json.loads(Path(json_path).read_text()), Path(json_path).with_suffix(".png"))


def cmd_validate(args: argparse.Namespace) -> int:
    """Run the validation; print, plot and write JSON."""
    if args.replot:
        replot(args.json)
        return 0
    repeats = args.repeats or (1 if args.quick else 3)
    rep = run_validation(args.quick, repeats, Path(args.out), args.calibration)
    print_report(rep)
    png = Path(args.json).with_suffix(".png") if args.json else Path(args.out) / "sim-validate.png"
    plot(rep, png)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rep, indent=1))
    print("wrote", args.json or "", png)
    return 0


def add_parser(subparsers: Any) -> None:
    """Add ``simulate validate`` to the ``simulate`` command."""
    from simulations.fleet.cli import simulate_commands

    v = simulate_commands(subparsers).add_parser(
        "validate", help="scenarios live (emulated devices and links) against their simulation"
    )
    v.add_argument("--json", default="", help="write the report here (and the plot beside it)")
    v.add_argument("--quick", action="store_true", help="half-length scenarios, one repeat")
    v.add_argument("--repeats", type=int, default=0, help="repeats (0: 3, or 1 with --quick)")
    v.add_argument("--calibration", default="", help="a calibration file (else measured now)")
    v.add_argument("--out", default="runs/sim-validate", help="folder for logs and traces")
    v.add_argument("--replot", action="store_true", help="only redraw the plot of --json")
    v.set_defaults(func=cmd_validate)


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
