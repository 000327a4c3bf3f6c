"""``python -m coordinator``: run one coordinator process, with the flags of ``tandem serve
coordinator`` (both are built from ``CoordinatorConfig``; ``--config FILE`` reads its
``[coordinator]`` table)."""

from __future__ import annotations

import argparse
from pathlib import Path

from coordinator.registry import CoordinatorConfig
from coordinator.service import run_coordinator
from node_runtime.config import add_config_args, add_config_file_arg, from_args

# Flag names from before the flags were built from the config, kept working.
ALIASES = {"heartbeat_interval_s": ("--heartbeat-interval",)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config``, a flag for every CoordinatorConfig field, ``--ready-file``, ``--log-level``."""
    add_config_file_arg(parser)
    add_config_args(parser, CoordinatorConfig, ALIASES)
    parser.add_argument(
        "--ready-file",
        type=Path,
        default=None,
        help='written as {"address": ..., "pid": ...} once listening',
    )
    parser.add_argument("--log-level", default="info")


def run(args: argparse.Namespace) -> int:
    """Build the config from the file and flags, serve until SIGTERM/SIGINT."""
    config = from_args(CoordinatorConfig, args, "coordinator")
    ready = Path(args.ready_file) if args.ready_file else None
    run_coordinator(config.host, config.port, ready, config, args.log_level)
    return 0


def main(argv: list[str] | None = None) -> None:
    """Parse flags, build the config, serve."""
    parser = argparse.ArgumentParser(prog="python -m coordinator", description=__doc__)
    add_arguments(parser)
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
