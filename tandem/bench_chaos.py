"""``tandem bench chaos [--quick] --json FILE``: faults, load and hostile input, measured.

Four phases, each on real processes:
1. the chaos suite (``tandem.chaos``): every fault scenario repeated and interleaved under client
   load, recording which requests each fault hit; then timed cancellations and the OpenAI HTTP
   API probed without a key (``unauthenticated_accepted`` adds the HTTP plane to the gRPC and
   telemetry planes of ``tandem security-audit``);
2. the soak: one session and 64 sessions against one cloud, interleaved windows, then 64
   sessions for 10 minutes (``--quick``: 60 s) while the cloud's RSS is sampled from /proc;
3. ``tandem fuzz`` (100 000 cases; ``--quick``: 10 000);
4. ``tandem security-audit`` (gRPC and telemetry).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tandem.report import write_json


@dataclass(frozen=True)
class ChaosBenchConfig:
    """One run of the benchmark."""

    quick: bool = False  # shorter soak, fewer fuzz cases (the scenarios still repeat 3 times)
    out_dir: Path = Path("runs/chaos")  # logs, sub-reports and the plot
    repeats: int = 3  # each fault scenario, interleaved
    soak_s: float = 600.0  # the long soak at 64 sessions
    window_s: float = 20.0  # each interleaved 1-session / 64-session window
    sessions: int = 64  # concurrent sessions of the soak
    fuzz_cases: int = 100_000  # hostile inputs
    cancels: int = 10  # cancellations timed

    @classmethod
    def make(cls, quick: bool, out_dir: Path) -> ChaosBenchConfig:
        """The full configuration, or the quick one."""
        if quick:
            return cls(True, out_dir, 3, 60.0, 8.0, 64, 10_000, 6)
        return cls(False, out_dir)


def _soak_phase(cfg: ChaosBenchConfig) -> dict[str, Any]:
    from tqdm import tqdm

    from tandem.chaos.cluster import ChaosCluster
    from tandem.chaos.soak import soak

    with ChaosCluster(cfg.out_dir / "soak-nodes") as cluster:
        cloud = cluster.launch("cloud", "soak-cloud", "--model", "target")
        pid = cluster.pid("soak-cloud")
        windows: dict[str, list[dict[str, Any]]] = {"1": [], str(cfg.sessions): []}
        for _ in tqdm(range(cfg.repeats), desc="soak windows (1 vs 64, interleaved)"):
            for n in (1, cfg.sessions):
                windows[str(n)].append(soak(cloud.address, pid, n, cfg.window_s, 2.0))
        with tqdm(total=int(cfg.soak_s), desc=f"soak {cfg.sessions} sessions", unit="s") as bar:
            long = soak(
                cloud.address,
                pid,
                cfg.sessions,
                cfg.soak_s,
                5.0,
                lambda t: bar.update(max(0, int(t) - bar.n)),
            )
    one = [w["p99_ms"] for w in windows["1"]]
    many = [w["p99_ms"] for w in windows[str(cfg.sessions)]]
    paired = [m / o for m, o in zip(many, one, strict=True)]
    errors: dict[str, int] = {}
    for w in [*windows["1"], *windows[str(cfg.sessions)], long]:
        for code, n in w["errors"].items():
            errors[code] = errors.get(code, 0) + n
    for w in [*windows["1"], *windows[str(cfg.sessions)]]:
        w.pop("rss_samples", None)
    return {
        "windows": windows,
        "long": long,
        "p99_one_session_ms_median": statistics.median(one),
        "p99_ratio_paired": paired,
        "errors": errors,
        "errors_not_resource_exhausted": sum(
            n for c, n in errors.items() if c != "RESOURCE_EXHAUSTED"
        ),
    }


def _subprocess_json(cmd: list[str], out: Path) -> dict[str, Any]:
    """Run a tandem command that writes ``out``; its JSON."""
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if not out.is_file():
        raise RuntimeError(f"{' '.join(cmd)} exited with {done.returncode} and wrote nothing")
    return dict(json.loads(out.read_text()))


def run_chaos_bench(cfg: ChaosBenchConfig) -> dict[str, Any]:
    """Every phase; the report (also printed and plotted)."""
    from tqdm import tqdm

    from tandem.chaos import report as rep
    from tandem.chaos.runner import ChaosConfig, run_chaos

    logging.getLogger("tandem.link").setLevel(logging.ERROR)  # resets are the point here
    t0 = time.time()
    ccfg = ChaosConfig(cfg.out_dir / "suite", repeats=cfg.repeats, cancels=cfg.cancels)
    with tqdm(total=len(ccfg.scenarios) * cfg.repeats, desc="fault scenarios") as bar:
        suite = run_chaos(ccfg, bar)
    soak = _soak_phase(cfg)
    fuzz_json = cfg.out_dir / "fuzz.json"
    fuzz = _subprocess_json(
        [
            sys.executable,
            "-m",
            "tandem",
            "fuzz",
            "--cases",
            str(cfg.fuzz_cases),
            "--json",
            str(fuzz_json),
        ],
        fuzz_json,
    )
    audit_json = cfg.out_dir / "audit.json"
    audit = _subprocess_json(
        [sys.executable, "-m", "tandem", "security-audit", "--json", str(audit_json)], audit_json
    )
    faults, records = suite["faults"], suite["records"]
    det = rep.detection_samples(faults)
    cancel_free = [c["free_s"] for c in suite["cancels"]]
    http = suite["http"]
    http_accepted = sum(r["accepted"] for r in http if not r["control"])
    controls_ok = all(r["accepted"] for r in http if r["control"])
    report: dict[str, Any] = {
        "quick": cfg.quick,
        **rep.request_figures(records, faults),
        "dead_peer_detect_s_p95": rep.p95(det["edge"] + det["cloud"]),
        "cancel_free_s_p95": rep.p95([c if c is not None else float("inf") for c in cancel_free]),
        "soak_rss_growth_mb_per_h": soak["long"]["rss_growth_mb_per_h"],
        "fuzz_cases": fuzz["fuzz_cases"],
        "fuzz_crashes": fuzz["fuzz_crashes"],
        "fuzz_unknown_status": fuzz["fuzz_unknown_status"],
        "unauthenticated_accepted": audit["unauthenticated_accepted"] + http_accepted,
        "unauthenticated_accepted_grpc": audit["unauthenticated_accepted_grpc"],
        "unauthenticated_accepted_telemetry": audit["unauthenticated_accepted_telemetry"],
        "unauthenticated_accepted_http": http_accepted,
        "unauthenticated_attempts": audit["unauthenticated_attempts"]
        + sum(1 for r in http if not r["control"]),
        "http_control_accepted": controls_ok,
        "p99_latency_ratio_64": soak["long"]["p99_ms"] / soak["p99_one_session_ms_median"],
        "p99_latency_ratio_64_paired_windows": soak["p99_ratio_paired"],
        "soak_errors": soak["errors"],
        "soak_errors_not_resource_exhausted": soak["errors_not_resource_exhausted"],
        "emulated": rep.EMULATED,
        "detection_s": det,
        "dead_peer_detect_s_p95_edge": rep.p95(det["edge"]),
        "dead_peer_detect_s_p95_cloud": rep.p95(det["cloud"]),
        "cancel_free_s": cancel_free,
        "scenarios": rep.scenario_rows(faults, records),
        "fault_runs": [f.as_json() for f in faults],
        "cancels": suite["cancels"],
        "http_cases": http,
        "soak": soak,
        "config": {
            "quick": cfg.quick,
            "repeats": cfg.repeats,
            "soak_s": cfg.soak_s,
            "window_s": cfg.window_s,
            "sessions": cfg.sessions,
            "fuzz_cases": cfg.fuzz_cases,
            "cancels": cfg.cancels,
            "clients": ccfg.clients,
            "outage_s": ccfg.outage_s,
            "request_deadline_s": ccfg.deadline_s,
        },
        "wall_s": time.time() - t0,
    }
    (cfg.out_dir / "records.jsonl").write_text(
        "".join(json.dumps(r.as_json()) + "\n" for r in records)
    )
    rep.print_report(report)
    rep.plot(report, cfg.out_dir / "bench-chaos.png")
    print(f"plot: {cfg.out_dir / 'bench-chaos.png'}")
    return report


def _handler(args: argparse.Namespace) -> int:
    cfg = ChaosBenchConfig.make(args.quick, Path(args.out))
    report = run_chaos_bench(cfg)
    write_json(args.json, report)
    return 0


def add_parser(subparsers: Any) -> None:
    """``tandem bench chaos``, attached to the existing ``bench`` command."""
    from tandem.cli import bench_subcommands

    bsub = bench_subcommands(subparsers)
    p = bsub.add_parser(
        "chaos", help="faults on real processes, a 64-session soak, fuzzing, auth probes"
    )
    p.add_argument("--quick", action="store_true", help="60 s soak, 10 000 fuzz cases")
    p.add_argument("--json", required=True, help="write the figures here")
    p.add_argument("--out", default="runs/chaos", help="folder for logs, sub-reports, the plot")
    p.set_defaults(func=_handler, fn=None)
