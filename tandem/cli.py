"""The ``tandem`` command: train, serve, up, chat, demo, bench, simulate and more. It only builds
configs and calls."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from node_runtime.kinds import KPolicy
from tandem.report import write_json

# Modules that add their own subcommands: each has ``add_parser(subparsers)``, imports its heavy
# dependencies inside its handlers, and sets ``func`` on its parsers.
COMMAND_MODULES: tuple[str, ...] = (
    "simulations.link.cli",
    "simulations.fleet.cli",
    "tandem.sim_validate",
    "tandem.drafters_cli",
    "tandem.security_cli",
    "tandem.bench_moe",
    "tandem.cli_serve",
    "tandem.cli_cluster",
    "tandem.bench_api",
    "tandem.fuzz_cli",
    "tandem.bench_chaos",
    "tandem.bench_spec_vllm",
)


def _train(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from models.train import PRESETS, train

    torch.set_num_threads(args.threads)
    if args.model == "moe":  # the MoE target trains in its own loop (load balancing)
        from models.moe.train import train_cli

        return train_cli(args.seed, args.out)
    names = list(PRESETS) if args.model == "all" else [args.model]
    for name in names:
        cfg = dataclasses.replace(PRESETS[name], seed=args.seed)
        out = Path(args.out) / name if args.out else None
        report = train(cfg, out_dir=out)
        print(json.dumps(dataclasses.asdict(report)))
    if args.onnx:
        from models.onnx_backend import export_checkpoint

        for name in names:
            if name == "drafter":
                src = Path(args.out) / name if args.out else name
                print(f"exported {export_checkpoint(src)}")
    return 0


def _export(args: argparse.Namespace) -> int:
    if args.checkpoint.startswith("hf:") or args.checkpoint.endswith(".gguf"):
        from models.llama_onnx import export_llama

        path = export_llama(args.checkpoint.removeprefix("hf:"), int8=not args.fp32)
    elif args.checkpoint == "prm" or _is_prm(Path(args.checkpoint)):
        import torch

        from models.reasoning.prm import export_prm_onnx, load_prm
        from models.torch_backend import resolve_checkpoint

        torch.set_num_threads(1)
        path = export_prm_onnx(load_prm(args.checkpoint), resolve_checkpoint(args.checkpoint))
    else:
        from models.onnx_backend import export_checkpoint

        path = export_checkpoint(args.checkpoint, int8=not args.fp32)
    print(f"exported {path}")
    return 0


def _is_prm(directory: Path) -> bool:
    """Whether a checkpoint directory holds a PRM (its weights have the step head)."""
    from safetensors import safe_open

    weights = directory / "model.safetensors"
    if not weights.is_file():
        return False
    with safe_open(str(weights), "np") as f:
        return "head.weight" in f.keys()


def _profiles(args: argparse.Namespace) -> int:
    from node_runtime.profiles import describe, get_profile, sources

    if not args.name:
        print(describe())
        return 0
    for name in args.name:
        p = get_profile(name)
        print(f"{p.name}: {p.model} on {p.device}")
        for line in sources(p):
            print(f"  {line}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from tandem.demo import DemoConfig, run_demo

    cfg = DemoConfig(
        problems=args.problems,
        target=args.target,
        drafter=args.drafter,
        edges=args.edges,
        k=args.k,
        k_policy=args.k_policy,
        temperature=args.temperature,
        out_dir=Path(args.out),
        devices=_devices(args.devices) if args.devices else None,
        link=args.link,
        pipelined=args.pipelined,
    )
    run_demo(cfg)
    return 0


def _devices(text: str) -> tuple[str, str]:
    edge, sep, cloud = text.partition(",")
    if not sep or not edge or not cloud or "," in cloud:
        raise ValueError(f"--devices takes EDGE,CLOUD profile names, got {text!r}")
    return edge, cloud


def _bench(args: argparse.Namespace) -> int:
    import torch

    # one intra-op thread: the benchmarks run several processes on few cores, and torch's
    # worker threads spin against them
    torch.set_num_threads(1)
    if args.bench == "spec":
        from tandem.bench_spec import SpecBenchConfig, run_spec_bench

        report = run_spec_bench(SpecBenchConfig(quick=args.quick, out_dir=Path(args.out)))
    elif args.bench == "schedule":
        from tandem.bench_schedule import DEFAULT_PAIR, ScheduleBenchConfig, run_schedule_bench
        from tandem.edge_cloud_grid import DevicePair

        pair: DevicePair | None = DEFAULT_PAIR
        if args.devices == "cpu":
            pair = None
        elif args.devices:
            pair = DevicePair(*_devices(args.devices))
        report = run_schedule_bench(
            ScheduleBenchConfig(quick=args.quick, out_dir=Path(args.out), pair=pair)
        )
    elif args.bench == "edge-cloud":
        from tandem.bench_edge_cloud import run_edge_cloud_bench
        from tandem.edge_cloud_grid import EdgeCloudConfig

        report = run_edge_cloud_bench(EdgeCloudConfig(quick=args.quick, out_dir=Path(args.out)))
    else:
        from tandem.bench_reason import ReasonBenchConfig, run_reason_bench

        report = run_reason_bench(ReasonBenchConfig(quick=args.quick, out_dir=Path(args.out)))
    write_json(args.json, report)
    return 0


def bench_subcommands(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The sub-commands of ``tandem bench``, for a command module that attaches one."""
    bench = subparsers.choices["bench"]
    return next(a for a in bench._actions if isinstance(a, argparse._SubParsersAction))


def build_parser() -> argparse.ArgumentParser:
    """All subcommands."""
    p = argparse.ArgumentParser(prog="tandem", description=__doc__)
    p.add_argument(
        "--security",
        choices=["auto", "tls", "plaintext"],
        default=None,
        help="node-to-node security for this command and every process it starts (default: "
        "$TANDEM_SECURITY, else auto: mTLS, token and CURVE, keys made on first use; plaintext "
        "only when asked for)",
    )
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train the bundled target and drafter from a seed")
    t.add_argument("model", choices=["target", "drafter", "moe", "all"], nargs="?", default="all")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", default="", help="folder for checkpoints (default: the bundled ones)")
    t.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 reproduces the bundled weights)"
    )
    t.add_argument("--onnx", action="store_true", help="also export the drafter to ONNX int8")
    t.set_defaults(fn=_train)

    e = sub.add_parser(
        "export-onnx", help="export a checkpoint to ONNX (an LM: int8 by default; the PRM: fp32)"
    )
    e.add_argument("checkpoint", nargs="?", default="drafter")
    e.add_argument("--fp32", action="store_true", help="skip int8 quantization")
    e.set_defaults(fn=_export)

    pr = sub.add_parser("profiles", help="device profiles: costs per call kind, with sources")
    pr.add_argument("name", nargs="*", help="profiles to show with every figure's source")
    pr.set_defaults(fn=_profiles)

    d = sub.add_parser("demo", help="local cluster: every mode on held-out problems")
    d.add_argument("--problems", type=int, default=40)
    d.add_argument("--target", default="target", help="cloud model spec (or hf:PATH)")
    d.add_argument("--drafter", default="drafter-int8", help="edge model spec")
    d.add_argument("--edges", type=int, default=2)
    d.add_argument("--k", type=int, default=4)
    d.add_argument("--k-policy", default="heuristic", choices=[p.value for p in KPolicy])
    d.add_argument("--temperature", type=float, default=0.0)
    d.add_argument("--out", default="runs/demo")
    d.add_argument(
        "--devices",
        default="",
        help="EDGE,CLOUD device profiles the nodes emulate (see `tandem profiles`); runs every "
        "mode and says which wins there and why",
    )
    d.add_argument("--link", default="", help="link profile between edges and cloud (e.g. 5g)")
    d.add_argument("--pipelined", action="store_true", help="also run pipelined speculation")
    d.set_defaults(fn=_demo)

    b = sub.add_parser("bench", help="benchmarks that compare configurations in one run")
    bsub = b.add_subparsers(dest="bench", required=True)
    bs = bsub.add_parser("spec", help="token speculation: losslessness, acceptance, cost, batching")
    bs.add_argument("--quick", action="store_true", help="small run, under a minute")
    bs.add_argument("--json", default="", help="write the figures here")
    bs.add_argument("--out", default="runs/bench-spec", help="folder for the plot")
    bs.set_defaults(fn=_bench)
    bh = bsub.add_parser("schedule", help="adaptive scheduling vs static policies, emulated links")
    bh.add_argument("--quick", action="store_true", help="fewer RTTs and problems")
    bh.add_argument("--json", default="", help="write the figures here")
    bh.add_argument("--out", default="runs/bench-schedule", help="folder for the plot and logs")
    bh.add_argument(
        "--devices",
        default="",
        help="EDGE,CLOUD device profiles the nodes emulate (default: a Jetson Orin Nano Super "
        "drafting for an 8B model on an H100); `cpu` runs unemulated on this machine",
    )
    bh.set_defaults(fn=_bench)
    br = bsub.add_parser("reason", help="step speculation and PRM search, accuracy vs budget")
    br.add_argument("--quick", action="store_true", help="fewer problems and budgets")
    br.add_argument("--json", default="", help="write the figures here")
    br.add_argument("--out", default="runs/bench-reason", help="folder for the plot and logs")
    br.set_defaults(fn=_bench)
    bec = bsub.add_parser(
        "edge-cloud", help="every policy over device pairs and link profiles, emulated devices"
    )
    bec.add_argument("--quick", action="store_true", help="fewer pairs, links and problems")
    bec.add_argument("--json", default="", help="write the figures here")
    bec.add_argument("--out", default="runs/bench-edge-cloud", help="folder for plots and logs")
    bec.set_defaults(fn=_bench)

    for module in COMMAND_MODULES:
        importlib.import_module(module).add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tandem`` script."""
    args = build_parser().parse_args(argv)
    if args.security:  # the environment carries it to the processes this command starts
        os.environ["TANDEM_SECURITY"] = args.security
        from node_runtime.security import set_default

        set_default(None)  # this process reads it again too
    try:
        fn = getattr(args, "fn", None) or args.func  # the link subcommands set func
        return int(fn(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"tandem: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
