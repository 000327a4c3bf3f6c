"""``python -m coordinator``: run one coordinator process (what the cluster launcher starts)."""

from __future__ import annotations

import argparse
from pathlib import Path

from coordinator.registry import CoordinatorConfig
from coordinator.service import run_coordinator


def main(argv: list[str] | None = None) -> None:
    """Parse flags, build the config, serve until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m coordinator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--ready-file",
        type=Path,
        default=None,
        help='written as {"address": ..., "pid": ...} once listening',
    )
    parser.add_argument("--heartbeat-interval", type=float, default=1.0)
    parser.add_argument("--missed-heartbeats", type=int, default=3)
    parser.add_argument("--max-nodes", type=int, default=1024)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    config = CoordinatorConfig(
        heartbeat_interval_s=args.heartbeat_interval,
        missed_heartbeats=args.missed_heartbeats,
        max_nodes=args.max_nodes,
    )
    run_coordinator(args.host, args.port, args.ready_file, config, args.log_level)


if __name__ == "__main__":
    main()
