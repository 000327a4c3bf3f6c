"""``tandem certs`` (a CA, node certificates, the token and CURVE keys), ``tandem
security-audit`` (counts unauthenticated calls a cluster accepts) and ``tandem security-overhead``
(what mTLS + token cost against plaintext)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tandem.report import write_json


def _node_spec(text: str) -> tuple[str, list[str]]:
    name, _, hosts = text.partition("=")
    if not name:
        raise argparse.ArgumentTypeError(f"--node takes ID[=IP,IP,NAME...], got {text!r}")
    return name, [h for h in hosts.split(",") if h]


def make_certs(
    out: Path, nodes: list[tuple[str, list[str]]], hosts: list[str]
) -> list[dict[str, Any]]:
    """Make (or complete) the state directory ``out`` for a cluster: CA, token, the server and
    client certificates valid for ``hosts``, a certificate and CURVE keys per node; returns one
    row per certificate."""
    from node_runtime import curve, security
    from node_runtime.pki import cert_info

    config = security.SecurityConfig(mode="auto", home=out)
    security.ca(config)
    security.token(config)
    curve.keys(config, curve.SUBSCRIBER)
    every_host = sorted({*hosts, *(h for _, hs in nodes for h in hs)})
    wanted = [(security.SERVER_IDENTITY, every_host), (security.CLIENT_IDENTITY, [])]
    wanted += [(name, sorted({*hs, *hosts})) for name, hs in nodes]
    rows = []
    for name, names in wanted:
        pair = security.identity(config, name, tuple(names))
        if name not in (security.SERVER_IDENTITY, security.CLIENT_IDENTITY):
            curve.keys(config, name)
        info = cert_info(pair.cert_pem)
        rows.append({"identity": info.node_id, "ips": sorted(info.ips), "dns": sorted(info.dns)})
    return rows


def _certs(args: argparse.Namespace) -> int:
    from node_runtime.security import default_home

    out = Path(args.out) if args.out else default_home()
    rows = make_certs(out, list(args.node), list(args.ip))
    print(f"state directory {out} (0700; keys and token 0600)")
    print(f"{'identity':<28} {'IP SANs':<40} DNS SANs")
    for row in rows:
        print(f"{row['identity']:<28} {','.join(row['ips']):<40} {','.join(row['dns'])}")
    print(
        "copy the directory to every host (ca.key may stay behind: nodes in mode tls need only "
        "ca.pem, the token, their certificate and keys) and run them with TANDEM_HOME=<dir> "
        "TANDEM_SECURITY=tls"
    )
    return 0


def _audit(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from tandem.security_audit import print_report, run_audit

    logging.basicConfig(level=args.log_level.upper())  # refusals are logged as warnings
    report = asyncio.run(run_audit(args.mode))
    print_report(report)
    write_json(args.json, report)
    secure = args.mode != "plaintext"
    return 0 if not secure or report["unauthenticated_accepted"] == 0 else 1


def _overhead(args: argparse.Namespace) -> int:
    import torch

    from tandem.security_overhead import main

    torch.set_num_threads(1)  # the benchmarks' convention: few cores, several model users
    return main(args.json, args.plot, args.repeats, args.quick)


def add_parser(subparsers: Any) -> None:
    """``tandem certs`` and ``tandem security-audit``."""
    certs = subparsers.add_parser(
        "certs",
        help="make a CA, node certificates (IP SANs), the token and CURVE keys",
        description=(
            "Make or complete a cluster's security state directory. Certificates carry IP SANs "
            "for the addresses given (gRPC checks the dialled IP against them) plus 127.0.0.1, "
            "::1 and localhost; each node's certificate names its id."
        ),
    )
    certs.add_argument("--out", default="", help="state directory (default: $TANDEM_HOME)")
    certs.add_argument(
        "--node",
        action="append",
        type=_node_spec,
        default=[],
        metavar="ID[=IP,...]",
        help="a node id and the addresses it is dialled at (repeatable)",
    )
    certs.add_argument(
        "--ip", action="append", default=[], help="an address every certificate covers"
    )
    certs.set_defaults(func=_certs)
    audit = subparsers.add_parser(
        "security-audit",
        help="try unauthenticated gRPC and telemetry access to a local cluster; count successes",
    )
    audit.add_argument("--json", default="", help="write the report here")
    audit.add_argument(
        "--mode",
        choices=("auto", "plaintext"),
        default="auto",
        help="secure the audited cluster as by default, or not at all (to see the audit see)",
    )
    audit.add_argument("--log-level", default="error", help="the refusals log at warning")
    audit.set_defaults(func=_audit)
    cost = subparsers.add_parser(
        "security-overhead",
        help="measure mTLS + token against plaintext on one cloud node (connect, unary, verify)",
    )
    cost.add_argument("--repeats", type=int, default=5)
    cost.add_argument("--quick", action="store_true", help="fewer calls per repeat")
    cost.add_argument("--json", default="runs/security/overhead.json")
    cost.add_argument("--plot", default="runs/security/overhead.png")
    cost.set_defaults(func=_overhead)


if __name__ == "__main__":  # pragma: no cover - for `python -m tandem.security_cli`
    parser = argparse.ArgumentParser(prog="tandem")
    add_parser(parser.add_subparsers(dest="command", required=True))
    ns = parser.parse_args()
    sys.exit(ns.func(ns))
