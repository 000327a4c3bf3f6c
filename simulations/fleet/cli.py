"""``tandem simulate ...``: run, scale, sweep, calibrate and prices (validate is registered by the
application package, which runs the live half: ``tandem.sim_validate``)."""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
from pathlib import Path
from typing import Any

from simulations.fleet.config import Arrivals, FleetConfig, SimMode, config_from

_ACTIONS: dict[int, Any] = {}


def simulate_commands(subparsers: Any) -> Any:
    """The ``simulate`` command's own subparsers (created once per parent), so that other
    modules can add leaves to it."""
    key = id(subparsers)
    if key not in _ACTIONS:
        p = subparsers.add_parser("simulate", help="fleet simulation on device and link profiles")
        _ACTIONS[key] = p.add_subparsers(dest="simulate_command", required=True, metavar="COMMAND")
    return _ACTIONS[key]


def add_parser(subparsers: Any) -> None:
    """Add ``simulate`` with run, scale, sweep, calibrate and prices."""
    sub = simulate_commands(subparsers)
    r = sub.add_parser("run", help="one fleet run; prints its figures as JSON")
    r.add_argument("--config", default="", help="TOML file of FleetConfig fields ([base] table)")
    r.add_argument("--set", action="append", default=[], help="FIELD=VALUE (JSON value)")
    r.add_argument("--json", default="", help="also write the figures here")
    r.add_argument(
        "--calibration", default="", help="take survival and host overheads from this file"
    )
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("scale", help="N devices for H hours: wall time, memory, events per s")
    s.add_argument("--devices", type=int, default=10_000)
    s.add_argument("--hours", type=float, default=1.0)
    s.add_argument("--clouds", type=int, default=0, help="0: one per 2,500 devices")
    s.add_argument("--requests-per-hour", type=float, default=6.0, help="per device")
    s.add_argument("--mode", default=SimMode.SPECULATION.value, choices=[m.value for m in SimMode])
    s.add_argument("--repeats", type=int, default=3, help="seeds, run one after another")
    s.add_argument("--json", default="")
    s.set_defaults(func=cmd_scale)

    w = sub.add_parser("sweep", help="a grid of runs from a TOML file: CSV, JSON and plots")
    w.add_argument("config", help="sweep file (see simulations/configs)")
    w.add_argument("--out", default="", help="output stem (default bench/sim-NAME)")
    w.add_argument("--repeats", type=int, default=0, help="seeds per cell (0: the file's)")
    w.add_argument("--ray", default="", help="run on Ray: 'local' or a cluster ADDRESS")
    w.add_argument("--ray-cpus", type=int, default=0, help="CPUs of a local Ray (0: all)")
    w.set_defaults(func=cmd_sweep)

    c = sub.add_parser("calibrate", help="measure this machine's models into a calibration file")
    c.add_argument("--out", default="runs/sim-calibration.json")
    c.add_argument("--drafter", default="drafter-int8")
    c.add_argument("--target", default="target")
    c.add_argument("--edge-device", default="", help="edge device profile (empty: raw)")
    c.add_argument("--cloud-device", default="", help="cloud device profile (empty: raw)")
    c.add_argument("--problems", type=int, default=24)
    c.add_argument("--k", type=int, default=8)
    c.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("prices", help="cloud prices and device power, with their sources")
    p.set_defaults(func=lambda _a: print(_prices()) or 0)


def _prices() -> str:
    from simulations.fleet.prices import describe_prices

    return describe_prices()


def cmd_run(args: argparse.Namespace) -> int:
    """One run."""
    from simulations.fleet.fleet import simulate

    table: dict[str, Any] = {}
    if args.config:
        import tomllib

        table = tomllib.loads(Path(args.config).read_text()).get("base", {})
    if args.calibration:
        calib = json.loads(Path(args.calibration).read_text())
        table.update(alpha=None, survival=calib["survival"])
        for key in ("call_overhead_ms", "edge_call_overhead_ms", "message_overhead_ms"):
            table[key] = calib.get(key, 0.0)
    for item in args.set:
        name, _, value = item.partition("=")
        table[name] = json.loads(value) if value[:1] in "[{0123456789-.tfn" else value
    out = simulate(config_from(table))
    text = json.dumps(out, indent=1, default=float)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0


def scale_config(
    devices: int, hours: float, clouds: int, per_hour: float, mode: str
) -> FleetConfig:
    """The scale run: ``devices`` Poisson devices at ``per_hour`` requests an hour each."""
    return FleetConfig(
        devices=devices,
        clouds=clouds or max(1, math.ceil(devices / 2500)),
        mode=SimMode(mode),
        duration_s=hours * 3600,
        arrivals=Arrivals(rate_per_device=per_hour / 3600),
    )


def cmd_scale(args: argparse.Namespace) -> int:
    """The scale benchmark: the same fleet over ``repeats`` seeds; median wall time."""
    from dataclasses import replace

    from simulations.fleet.fleet import simulate

    cfg = scale_config(args.devices, args.hours, args.clouds, args.requests_per_hour, args.mode)
    runs = []
    for seed in range(args.repeats):
        r = simulate(replace(cfg, seed=seed))
        r.pop("timeline", None)
        runs.append(r)
        print(
            f"seed {seed}: wall {r['wall_s']:.1f} s, {r['events']:,} events, "
            f"{r['events_per_s']:,.0f} events/s, {r['requests']:,} requests, "
            f"p50 {r['latency_p50_s']:.2f} s, p95 {r['latency_p95_s']:.2f} s"
        )
    walls = [r["wall_s"] for r in runs]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KB
    report = {
        "emulated": "simulated: device and link profiles",
        "devices": args.devices,
        "hours": args.hours,
        "clouds": cfg.clouds,
        "mode": args.mode,
        "wall_s": statistics.median(walls),
        "wall_s_range": [min(walls), max(walls)],
        "peak_rss_mb": rss,
        "events_per_s": statistics.median(r["events_per_s"] for r in runs),
        "events": statistics.median(r["events"] for r in runs),
        "requests": statistics.median(r["requests"] for r in runs),
        "rounds": statistics.median(r["rounds"] for r in runs),
        "targets": {"wall_s": "<= 60", "peak_rss_mb": "<= 2048"},
        "met": {"wall_s": statistics.median(walls) <= 60, "peak_rss_mb": rss <= 2048},
        "runs": runs,
    }
    print(
        f"scale: {args.devices:,} devices x {args.hours:g} h on {cfg.clouds} clouds: "
        f"wall {report['wall_s']:.1f} s (median of {len(runs)}), peak RSS {rss:.0f} MB, "
        f"{report['events_per_s']:,.0f} events/s"
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1, default=float))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run a sweep file; write JSON, CSV and the plot."""
    from dataclasses import replace

    from simulations.fleet.plots import plot_sweep
    from simulations.fleet.sweep import load_sweep, print_table, run_sweep, write_outputs

    sweep = load_sweep(args.config)
    if args.repeats:
        sweep = replace(sweep, repeats=args.repeats)
    runner = None
    if args.ray:
        from simulations.fleet.ray_runner import ray_runner

        runner = ray_runner(args.ray, args.ray_cpus or None)
    report = run_sweep(sweep, runner)
    out = Path(args.out or f"bench/sim-{Path(args.config).stem}")
    paths = write_outputs(report, out)
    png = plot_sweep(report, out)
    print_table(report)
    print("wrote", ", ".join(str(p) for p in [*paths.values(), png] if p))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Measure and write the calibration file."""
    from simulations.fleet.calibrate import calibrate

    out = calibrate(
        args.drafter, args.target, args.edge_device, args.cloud_device, args.problems, args.k
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    surv = ", ".join(f"{s:.3f}" for s in out["survival"])
    print(f"survival (k={out['k']}, {out['rounds']} rounds): {surv}")
    print(
        f"host time beyond the profile per call: edge {out['edge_call_overhead_ms']:.3f} ms,"
        f" cloud {out['call_overhead_ms']:.3f} ms; wrote {args.out}"
    )
    return 0
