"""``tandem fuzz [--cases N] --json FILE``: hostile input against every surface, on real servers.

Cases are shared out by weight: the telemetry decoder is cheap and gets most of them; every gRPC
method and the HTTP API get their share of the rest (see ``tandem/fuzz_targets.py``). Writes
fuzz_cases, fuzz_crashes, fuzz_unknown_status, per-surface counts and every finding to JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
from pathlib import Path
from typing import Any

from tandem.fuzzing import Tally

# Shares of the cases per kind of surface (telemetry frames cost microseconds, RPCs milliseconds).
SHARES = {"telemetry": 0.40, "grpc": 0.55, "http": 0.05}
CHECK_EVERY = 200  # liveness and session-count check after this many network cases


async def fuzz(cases: int, seed: int = 0, progress: Any = None, concurrency: int = 8) -> Tally:
    """Run ``cases`` cases over all surfaces on freshly started servers; returns the tally."""
    from tandem.fuzz_targets import Harness, methods

    tally = Tally()
    harness = Harness(tally)
    await harness.start()
    rpcs = methods()
    try:
        n_tel = int(cases * SHARES["telemetry"])
        n_http = int(cases * SHARES["http"])
        n_grpc = cases - n_tel - n_http
        rng = random.Random(seed)
        for _ in range(n_tel):
            harness.telemetry_case(rng)
            if progress is not None:
                progress.update(1)

        async def worker(w: int, share: int) -> None:
            wr = random.Random(seed * 1000 + w)
            for _ in range(share):
                svc, m = rpcs[wr.randrange(len(rpcs))]
                await harness.grpc_case(wr, svc, m)
                if progress is not None:
                    progress.update(1)

        async def http_worker(share: int) -> None:
            hr = random.Random(seed + 7)
            for _ in range(share):
                await harness.http_case(hr)
                if progress is not None:
                    progress.update(1)

        done = 0
        while done < n_grpc + n_http:
            block = min(CHECK_EVERY, n_grpc + n_http - done)
            g = block * n_grpc // max(1, n_grpc + n_http)
            h = block - g
            shares = [
                g // concurrency + (1 if w < g % concurrency else 0) for w in range(concurrency)
            ]
            await asyncio.gather(
                *(worker(done + w, s) for w, s in enumerate(shares)), http_worker(h)
            )
            done += block
            problem = await harness.check()
            if problem:
                tally.add("health", "crash", problem, f"after case {tally.cases}")
                break
    finally:
        await harness.stop()
    return tally


def _handler(args: argparse.Namespace) -> int:
    import logging

    from tqdm import tqdm

    logging.getLogger().setLevel(logging.ERROR)  # refusals are logged; thousands of them here

    with tqdm(total=args.cases, desc="fuzz", unit="case") as bar:
        tally = asyncio.run(fuzz(args.cases, args.seed, bar))
    out = tally.as_json()
    out.update(command=" ".join(["tandem", *sys.argv[1:]]), seed=args.seed)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"{'surface':44s} {'cases':>8s} {'ok':>7s} {'clean':>7s} {'findings':>8s}")
    for name, c in sorted(out["surfaces"].items()):
        bad = c.get("crash", 0) + c.get("unknown", 0) + c.get("no_message", 0)
        print(f"{name:44s} {c['cases']:8d} {c.get('ok', 0):7d} {c.get('clean', 0):7d} {bad:8d}")
    print(
        f"fuzz_cases={tally.cases} fuzz_crashes={tally.crashes} "
        f"fuzz_unknown_status={tally.unknown_status} -> {args.json}"
    )
    return 0 if tally.crashes == 0 and tally.unknown_status == 0 else 1


def add_parser(subparsers: Any) -> None:
    """``tandem fuzz``."""
    p = subparsers.add_parser("fuzz", help="fuzz every gRPC service, telemetry and the HTTP API")
    p.add_argument("--cases", type=int, default=100_000, help="cases in total across surfaces")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", required=True, help="where to write the figures and findings")
    p.set_defaults(func=_handler)
