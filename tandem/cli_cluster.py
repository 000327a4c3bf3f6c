"""``tandem up``, ``generate``, ``chat``, ``status``: a local cluster and the ways to talk to it.

``tandem up`` starts a coordinator (serving the OpenAI-compatible API), a cloud node and edge
nodes as processes on this machine, in the foreground, and writes where they listen to
``<state dir>/up.json`` so that the other commands find them without flags.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from node_runtime.config import add_config_args, add_config_file_arg, from_args
from node_runtime.kinds import KPolicy, Mode, Objective, QualityFloor


@dataclass(frozen=True)
class ClusterConfig:
    """A local cluster (``tandem up``); each node reads its own table of the same TOML file."""

    edges: int = 1  # edge nodes to start
    api_port: int = 8000  # the coordinator's OpenAI-compatible API and /metrics; 0: a free port
    coordinator_port: int = 0  # the coordinator's gRPC port; 0: a free one
    edge_api: bool = True  # each edge serves the API too, on a free port (agents on the device)
    target: str = ""  # the cloud's model spec; "": the [cloud] table's, else its default
    drafter: str = ""  # the edges' model spec; "": the [edge] table's, else its default
    workdir: str = ""  # logs and ready files; "": runs/up


def state_file() -> Path:
    """Where ``tandem up`` says where the cluster listens."""
    from node_runtime.security import default_home

    return default_home() / "up.json"


def _listening(log: Path, event: str = "api_listening", timeout_s: float = 30.0) -> str:
    """The address a node logged for ``event`` (its API, whose port may have been 0)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        for line in log.read_text(errors="replace").splitlines():
            if f'"event": "{event}"' in line:
                return str(json.loads(line)["address"])
        time.sleep(0.05)
    raise TimeoutError(f"{log.name}: no {event} line within {timeout_s} s")


def _up(args: argparse.Namespace) -> int:
    from tandem.cluster import LocalCluster

    cfg = from_args(ClusterConfig, args, "cluster")
    config = ["--config", str(Path(args.config).resolve())] if args.config else []
    workdir = Path(cfg.workdir or "runs/up")
    stop = {"now": False}

    def on_signal(*_: Any) -> None:
        stop["now"] = True

    with LocalCluster(workdir=workdir) as cluster:
        print(f"starting: logs in {workdir}/", file=sys.stderr)
        coord = cluster.start(
            "coordinator",
            "coordinator",
            *config,
            "--port",
            str(cfg.coordinator_port),
            "--api-port",
            str(cfg.api_port),
        )
        api = _listening(coord.log_path)
        target = ["--model", cfg.target] if cfg.target else []
        cloud = cluster.start(
            "cloud",
            "cloud",
            *config,
            "--coordinator",
            coord.address,
            *target,
            "--metrics-port",
            "0",
        )
        cloud_metrics = _listening(cloud.log_path, "metrics_listening")
        drafter = ["--model", cfg.drafter] if cfg.drafter else []
        edge_api = ["--api-port", "0"] if cfg.edge_api else []
        edges = [
            cluster.start(
                "edge", f"edge-{i}", *config, "--coordinator", coord.address, *drafter, *edge_api
            )
            for i in range(cfg.edges)
        ]
        edge_apis = [_listening(e.log_path) for e in edges] if cfg.edge_api else []
        state = {
            "coordinator": coord.address,
            "api": f"http://{api}/v1",
            "metrics": f"http://{api}/metrics",
            "cloud": cloud.address,
            "cloud_metrics": f"http://{cloud_metrics}/metrics",
            "edges": [e.address for e in edges],
            "edge_apis": [f"http://{a}/v1" for a in edge_apis],
            "pid": os.getpid(),
        }
        state_file().parent.mkdir(parents=True, exist_ok=True)
        state_file().write_text(json.dumps(state, indent=2))
        print(json.dumps(state, indent=2))
        print(
            f"Tandem is up. OpenAI API: {state['api']} (model 'tandem')\n"
            f'  tandem chat    |  tandem generate "Q 17 + 5 * 3 - 4 ?"  |  tandem status\n'
            "Ctrl-C stops the cluster.",
            flush=True,
        )
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        while not stop["now"]:
            dead = [p for p in cluster.procs if p.popen.poll() is not None]
            if dead:
                print(f"tandem up: {dead[0].name} exited; see {dead[0].log_path}", file=sys.stderr)
                return 1
            time.sleep(0.2)
        print("stopping", file=sys.stderr)
    state_file().unlink(missing_ok=True)
    return 0


def _known(args: argparse.Namespace, key: str) -> str:
    """The address given by flag, else the running ``tandem up``'s."""
    given = getattr(args, key.replace("-", "_"), "")
    if given:
        return str(given)
    try:
        return str(json.loads(state_file().read_text())[key])
    except (FileNotFoundError, KeyError, json.JSONDecodeError):
        raise ValueError(f"no --{key} given and no running `tandem up` found") from None


def _options(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "seed": args.seed,
        "objective": args.objective,
    }
    for name in ("mode", "k_policy", "quality_floor"):
        if getattr(args, name):
            out[name] = getattr(args, name)
    return out


def _generate(args: argparse.Namespace) -> int:
    from tandem.client import Client

    with Client(_known(args, "coordinator")) as tandem:
        if args.json:
            result = tandem.generate(args.prompt, **_options(args))
            print(json.dumps(asdict(result), indent=2))
            return 0
        result = None
        for piece in tandem.stream(args.prompt, **_options(args)):
            print(piece.text, end="", flush=True)
            result = piece.result or result
    print()
    if result is not None:
        print(_summary(asdict(result)["account"], result.mode, result.cloud), file=sys.stderr)
    return 0


def _summary(account: dict[str, Any], mode: str | None, cloud: str | None) -> str:
    drafted = account.get("drafted_tokens") or 0
    rate = f"{account.get('accepted_tokens', 0) / drafted:.2f}" if drafted else "-"
    return (
        f"[{mode or '?'}{' on ' + cloud if cloud else ''}: acceptance {rate}, "
        f"cloud {float(account.get('cloud_model_cpu_s') or 0) * 1e3:.1f} ms, "
        f"wall {float(account.get('wall_s') or 0) * 1e3:.0f} ms]"
    )


def _chat(args: argparse.Namespace) -> int:
    from tandem.chat import chat_repl

    return chat_repl(_known(args, "api"), args)


def _status(args: argparse.Namespace) -> int:
    from tandem.client import Client
    from tandem.status_table import render

    with Client(_known(args, "coordinator")) as tandem:
        while True:
            table = render(tandem.status())
            if args.once:
                print(table)
                return 0
            print("\033[2J\033[H" + time.strftime("%H:%M:%S ") + "Ctrl-C to quit\n" + table)
            time.sleep(args.interval)


def _request_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=[m.value for m in Mode], help="default: planned")
    p.add_argument("--k-policy", choices=[k.value for k in KPolicy])
    p.add_argument("--objective", default="latency", choices=[o.value for o in Objective])
    p.add_argument("--quality-floor", choices=[q.value for q in QualityFloor])
    p.add_argument("--max-tokens", type=int, default=0, help="0: the edge's cap")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)


def add_parser(sub: Any) -> None:
    """``up``, ``generate``, ``chat`` and ``status``."""
    up = sub.add_parser("up", help="a local cluster in the foreground, with the OpenAI API")
    add_config_file_arg(up)
    add_config_args(up, ClusterConfig)
    up.set_defaults(func=_up)

    g = sub.add_parser("generate", help="one prompt through the cluster's job API")
    g.add_argument("prompt")
    g.add_argument("--coordinator", default="", help="host:port; default: the running `up`")
    g.add_argument("--json", action="store_true", help="print the result and account as JSON")
    _request_flags(g)
    g.set_defaults(func=_generate)

    c = sub.add_parser("chat", help="a streaming chat REPL over the OpenAI-compatible API")
    c.add_argument("--api", default="", help="API root, http://host:port/v1; default: `up`'s")
    c.add_argument("--model", default="tandem")
    c.add_argument("--system", default="", help="a system message to start with")
    c.add_argument("--api-key", default=os.environ.get("TANDEM_API_KEY", ""))
    _request_flags(c)
    c.set_defaults(func=_chat)

    s = sub.add_parser("status", help="live table of nodes, load, acceptance and link RTTs")
    s.add_argument("--coordinator", default="", help="host:port; default: the running `up`")
    s.add_argument("--once", action="store_true", help="print the table once and exit")
    s.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    s.set_defaults(func=_status)
