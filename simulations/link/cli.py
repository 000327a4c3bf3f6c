"""``tandem link ...``: list profiles, run the emulator in front of a service, check it measures
what it is asked. :func:`add_parser` plugs into the ``tandem`` CLI; :func:`main` runs alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from node_runtime.serving import log_event, setup_logging
from simulations.link.check import DEFAULT_CHECK_SPEC, CheckConfig, run_check
from simulations.link.profiles import PROFILES, UnknownProfileError, get_profile, profile_spec
from simulations.link.proxy import LinkProxy, ProxyConfig
from simulations.link.spec import FIELD_NAMES, LinkSpec, Schedule, parse_hostport

logger = logging.getLogger("tandem.link")

# Shortcut flags that set both directions; --set KEY=VALUE covers one direction (up_*/down_*).
_SHORTCUTS = {
    "latency_ms": float,
    "jitter_ms": float,
    "bandwidth_mbit": float,
    "resets_per_s": float,
}


def add_parser(subparsers: Any) -> None:
    """Add ``link`` with sub-commands ``profiles``, ``run`` and ``check`` to an argparse
    subparsers object. Each leaf sets ``func``: call ``args.func(args)`` for the exit code."""
    link = subparsers.add_parser(
        "link",
        help="user-space link emulator (latency, bandwidth, "
        "jitter, resets) in front of a TCP service",
    )
    _add_commands(link.add_subparsers(dest="link_command", required=True, metavar="COMMAND"))


def _add_commands(sub: Any) -> None:
    p = sub.add_parser("profiles", help="table of named link profiles")
    p.add_argument("--sources", action="store_true", help="also print where figures come from")
    p.add_argument("--json", action="store_true", help="print the profiles as JSON")
    p.set_defaults(func=cmd_profiles)

    r = sub.add_parser("run", help="run the emulator until Ctrl-C, logging JSON lines")
    r.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT to listen on (port 0: any)")
    r.add_argument("--upstream", required=True, help="HOST:PORT to forward connections to")
    r.add_argument("--profile", default="loopback", help="starting profile (see 'profiles')")
    for name, kind in _SHORTCUTS.items():
        r.add_argument(
            "--" + name.replace("_", "-"),
            type=kind,
            default=None,
            help=f"override {name} in both directions",
        )
    r.add_argument("--blackhole", action="store_true", help="start blackholed both ways")
    r.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override one setting, e.g. up_bandwidth_mbit=2 ({', '.join(FIELD_NAMES)}"
        ", optionally prefixed up_/down_)",
    )
    r.add_argument("--schedule", type=Path, help="JSON schedule of timed changes")
    r.add_argument("--seed", type=int, default=0, help="seed for jitter and reset draws")
    r.add_argument(
        "--stats-every",
        type=float,
        default=5.0,
        help="log counters every N seconds (0: only at the end)",
    )
    r.add_argument("--duration", type=float, default=0.0, help="stop after N seconds (0: never)")
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("check", help="measure RTT and bandwidth through the emulator vs asked")
    c.add_argument("--profile", default=None, help="profile to check (default: 30 ms, 8 Mbit/s)")
    c.add_argument("--json", type=Path, default=None, help="also write the result to this file")
    c.add_argument("--samples", type=int, default=CheckConfig.rtt_samples, help="RTT samples")
    c.add_argument(
        "--transfer-s",
        type=float,
        default=CheckConfig.transfer_s,
        help="seconds each bulk transfer lasts at the asked rate",
    )
    c.add_argument(
        "--tolerance",
        type=float,
        default=0.10,
        help="exit 1 when a quantity is off by more than this fraction",
    )
    c.set_defaults(func=cmd_check)


def _parse_value(text: str) -> Any:
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    return float(text)


def build_spec(args: argparse.Namespace) -> LinkSpec:
    """The starting spec of ``run``: the profile, then shortcut flags, then ``--set``."""
    spec = get_profile(args.profile).spec
    change: dict[str, Any] = {
        k: getattr(args, k) for k in _SHORTCUTS if getattr(args, k) is not None
    }
    if args.blackhole:
        change["blackhole"] = True
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set takes KEY=VALUE, got {item!r}")
        try:
            change[key.strip()] = _parse_value(value)
        except ValueError:
            raise ValueError(f"--set {key}: {value!r} is not a number or true/false") from None
    return spec.changed(change)


def cmd_profiles(args: argparse.Namespace) -> int:
    """Print the profile table (or JSON)."""
    if args.json:
        out = {
            n: {"description": p.description, "source": p.source, **p.spec.to_dict()}
            for n, p in PROFILES.items()
        }
        print(json.dumps(out, indent=2))
        return 0
    head = (
        f"{'name':<14}{'up ms':>8}{'±':>6}{'Mbit/s':>9}{'down ms':>9}{'±':>6}{'Mbit/s':>9}"
        f"{'resets/h':>10}  description"
    )
    print(head)
    print("-" * len(head))
    for p in PROFILES.values():
        up, down = p.spec.uplink, p.spec.downlink
        resets = 3600 * (up.resets_per_s + down.resets_per_s)

        def bw(mbit: float) -> str:
            return "inf" if mbit <= 0 else f"{mbit:g}"

        print(
            f"{p.name:<14}{up.latency_ms:>8g}{up.jitter_ms:>6g}{bw(up.bandwidth_mbit):>9}"
            f"{down.latency_ms:>9g}{down.jitter_ms:>6g}{bw(down.bandwidth_mbit):>9}"
            f"{resets:>10.3g}  {p.description}"
        )
        if args.sources:
            print(f"{'':<14}source: {p.source}")
    print(
        "\nms: one-way latency floor; ±: mean extra delay (jitter, uniform 0..2x); "
        "resets/h: connection resets per hour of connection life (both directions)"
    )
    return 0


async def _run(args: argparse.Namespace, spec: LinkSpec, schedule: Schedule | None) -> int:
    cfg = ProxyConfig(upstream=args.upstream, listen=args.listen, seed=args.seed)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on every platform
            loop.add_signal_handler(sig, stop.set)
    async with LinkProxy(cfg, spec, schedule) as proxy:
        log_event(
            logger,
            "link.listening",
            address=proxy.address,
            port=proxy.port,
            upstream=cfg.upstream,
            profile=args.profile,
        )
        stats = asyncio.create_task(_log_stats(proxy, args.stats_every))
        try:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), args.duration if args.duration > 0 else None)
        finally:
            stats.cancel()
    return 0  # stopping logs the final counters


async def _log_stats(proxy: LinkProxy, every_s: float) -> None:
    while every_s > 0:
        await asyncio.sleep(every_s)
        log_event(logger, "link.stats", **vars(proxy.counters()))


def cmd_run(args: argparse.Namespace) -> int:
    """Run the emulator in the foreground until Ctrl-C (or ``--duration``)."""
    setup_logging("info", stream=sys.stdout)
    try:
        parse_hostport(args.upstream)
        parse_hostport(args.listen)
        spec = build_spec(args)
        schedule = Schedule.load(args.schedule, profile_spec) if args.schedule else None
    except (ValueError, UnknownProfileError, OSError) as exc:
        print(f"tandem link run: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_run(args, spec, schedule))
    except KeyboardInterrupt:  # the signal handler could not be installed
        return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Measure the emulator against a profile (or the default check link); print a table."""
    try:
        spec = get_profile(args.profile).spec if args.profile else DEFAULT_CHECK_SPEC
    except UnknownProfileError as exc:
        print(f"tandem link check: {exc}", file=sys.stderr)
        return 2
    label = args.profile or "default (30 ms one-way, 8 Mbit/s each way)"
    cfg = CheckConfig(rtt_samples=args.samples, transfer_s=args.transfer_s)
    result = run_check(spec, label, cfg)
    print(result.table())
    if args.json is not None:
        args.json.write_text(json.dumps(result.to_dict(), indent=2))
    return 0 if result.within(args.tolerance) else 1


def main(argv: list[str] | None = None) -> int:
    """Run ``tandem link`` commands standalone: ``python -m simulations.link check``."""
    parser = argparse.ArgumentParser(
        prog="python -m simulations.link", description="Tandem's user-space link emulator"
    )
    _add_commands(parser.add_subparsers(dest="link_command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
