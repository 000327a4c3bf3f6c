"""``tandem serve coordinator|cloud|edge``: one node, its flags built from its config dataclass.

Every setting comes from the node's config (``CoordinatorConfig``, ``CloudConfig``,
``EdgeNodeConfig``): ``--config FILE`` reads the role's table of a TOML file (``[coordinator]``,
``[cloud]``, ``[edge]``), and flags override it. The flag names of earlier versions still work.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from node_runtime.config import add_config_args, add_config_file_arg, from_args

# Flags of earlier versions, kept: --threads, --cloud, --route.
CLOUD_ALIASES = {"torch_threads": ("--threads",), "serving_engine": ("--engine",)}
EDGE_ALIASES = {"clouds": ("--cloud",), "routes": ("--route",)}


def _process_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ready-file", default="", help="write {address, pid} here once listening")
    parser.add_argument("--log-level", default="info")


def add_parser(subparsers: Any) -> None:
    """``serve`` with one subcommand per role."""
    from cloud_node.node import CloudConfig
    from coordinator.__main__ import add_arguments as coordinator_arguments
    from edge_node.node import EdgeNodeConfig

    serve = subparsers.add_parser("serve", help="run one node (flags or --config FILE)")
    roles = serve.add_subparsers(dest="role", required=True)
    coordinator = roles.add_parser("coordinator", help="registry, scheduler, job API, HTTP API")
    coordinator_arguments(coordinator)
    coordinator.set_defaults(func=_serve)
    for role, cls, aliases, help in (
        ("cloud", CloudConfig, CLOUD_ALIASES, "target model: verification, generation, scoring"),
        ("edge", EdgeNodeConfig, EDGE_ALIASES, "drafter, requests, local HTTP API"),
    ):
        p = roles.add_parser(role, help=help)
        add_config_file_arg(p)
        add_config_args(p, cls, aliases)
        _process_args(p)
        p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from node_runtime.serving import setup_logging

    if args.role == "coordinator":
        from coordinator.__main__ import run

        return run(args)
    ready = Path(args.ready_file) if args.ready_file else None
    setup_logging(args.log_level)
    if args.role == "cloud":
        from cloud_node.node import CloudConfig, run_cloud

        asyncio.run(run_cloud(from_args(CloudConfig, args, "cloud"), ready))
        return 0
    from edge_node.node import EdgeNodeConfig, run_edge

    asyncio.run(run_edge(from_args(EdgeNodeConfig, args, "edge"), ready))
    return 0
