"""Many emulated edge devices at once against one cloud, for the capacity figures.

    python -m tandem.edge_cloud_load --cloud ADDR --via ADDR --device EDGE_PROFILE \\
        --sessions 8,32 --requests 4 [--repeat I]

An edge node process emulates ONE device: its drafter calls hold that device one at a time, as
a real Pi would. N concurrent edge sessions therefore stand for N devices, and this process
makes them: each session has its own emulated drafter (``EmulatedLM`` with its own device lock,
padding every call to the profile's time) over one shared copy of the real drafter weights, and
runs the edge's own speculation code (``edge_node.speculation.Speculator``) against the cloud,
through the link emulator (``--via``). Tokens and acceptance are real; each session's drafting
time is its device's. Cloud-only sessions send the same prompts to the cloud's Generate, as an
edge forwarding cloud-only requests does.

For each session count, both modes run in turn (their order alternates with ``--repeat``); the
cloud's emulated device-seconds are read from its Metrics (``--cloud``, direct) before and after
each. Prints one JSON line: a list of results.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from edge_node.clouds import CloudDirectory
from edge_node.speculation import Hooks, SpecSettings, Speculator
from models import task
from models.base import CausalLM, Tokenizer
from models.loader import load_lm
from models.sampling import SamplingParams
from node_runtime.emulation import EmulatedLM
from node_runtime.kinds import KPolicy
from node_runtime.profiles import get_profile
from node_runtime.serving import aio_channel
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

MODES = ("speculation", "cloud-only")
LOAD_SEED = task.HELDOUT_SEED + 40  # problems of the capacity phase (not the grid's)


def prompts_for(tok: Tokenizer, session: int, requests: int) -> list[list[int]]:
    """The prompts session ``session`` runs, the same in every mode and repeat."""
    problems = task.generate(requests, LOAD_SEED + 1000 * session)
    return [[tok.bos_id, *tok.encode(p.question)] for p in problems]  # type: ignore[list-item]


async def _speculating(
    i: int, via: str, lm: EmulatedLM, tok: Tokenizer, prompts: list[list[int]], max_new: int
) -> dict[str, float]:
    """One emulated device speculating its prompts one after another."""
    spec = Speculator(lm, tokenizer=tok)
    clouds = CloudDirectory(f"load-edge-{i}", static=[via])
    out = dict.fromkeys(("tokens", "drafted", "accepted", "rounds", "degraded"), 0.0)
    try:
        for p in prompts:
            s = SpecSettings(max_new=max_new, eos_id=tok.eos_id, k=4, k_policy=KPolicy.RTT)
            r = await spec.run(
                p, SamplingParams(0.0), s, clouds.pick, Hooks(observe_rtt=clouds.observe_rtt)
            )
            out["tokens"] += len(r.tokens)
            out["drafted"] += r.account.drafted_tokens
            out["accepted"] += r.account.accepted_tokens
            out["rounds"] += r.account.verify_rounds
            out["degraded"] += r.degraded
    finally:
        await clouds.close()
        spec.pool.shutdown(wait=False)
    return out


async def _cloud_only(i: int, via: str, prompts: list[list[int]], max_new: int) -> dict[str, float]:
    """One client sending its prompts to the cloud's Generate one after another."""
    tokens = 0
    async with aio_channel(via, client_id=f"load-edge-{i}") as ch:
        stub = pb_grpc.CloudStub(ch)
        for p in prompts:
            req = pb.GenerateRequest(prompt=p, max_new_tokens=max_new)
            tokens += len((await stub.Generate(req, timeout=300)).tokens)
    return {"tokens": float(tokens)}


async def cloud_values(address: str) -> dict[str, float]:
    """The cloud's Metrics values (emulated device-seconds among them)."""
    async with aio_channel(address) as ch:
        reply = await pb_grpc.CloudStub(ch).Metrics(pb.MetricsRequest(), timeout=10)
    return dict(reply.values)


# Cloud Metrics read as deltas over a configuration: (Metrics key, result key).
CLOUD_DELTAS = (
    ("emulated_device_s", "device_s"),  # emulated device time of every model call
    ("emulated_calls", "cloud_passes"),  # model calls (forward passes) on the emulated device
    ("emulated_infeasible_calls", "cloud_infeasible_calls"),  # calls slower here than profiled
    ("rounds", "cloud_rounds"),  # verify rounds answered
    ("batches", "cloud_verify_passes"),  # passes that verified at least one round
)


def cloud_deltas(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What the cloud did between two Metrics readings (a key it lacks counts as 0)."""
    return {out: after.get(k, 0.0) - before.get(k, 0.0) for k, out in CLOUD_DELTAS}


async def one_config(
    mode: str,
    sessions: int,
    args: argparse.Namespace,
    inner: CausalLM,
    tok: Tokenizer,
) -> dict[str, Any]:
    """``sessions`` concurrent sessions in ``mode``: tokens, wall time, cloud device-seconds."""
    profile = get_profile(args.device)
    lms = [EmulatedLM(inner, profile) for _ in range(sessions)]
    plans = [prompts_for(tok, i, args.requests) for i in range(sessions)]
    before = await cloud_values(args.cloud)
    t0 = time.perf_counter()
    if mode == "speculation":
        jobs = [
            _speculating(i, args.via, lms[i], tok, plans[i], args.max_new) for i in range(sessions)
        ]
    else:
        jobs = [_cloud_only(i, args.via, plans[i], args.max_new) for i in range(sessions)]
    results = await asyncio.gather(*jobs)
    wall = time.perf_counter() - t0
    after = await cloud_values(args.cloud)
    out: dict[str, Any] = {"mode": mode, "sessions": sessions, "requests": sessions * args.requests}
    for key in results[0]:
        out[key] = sum(r[key] for r in results)
    out["wall_s"] = wall
    out.update(cloud_deltas(before, after))
    out["edge_calls"] = sum(lm.stats.calls for lm in lms)
    out["edge_infeasible_calls"] = sum(lm.stats.infeasible_calls for lm in lms)
    return out


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every (session count, mode) in turn; modes alternate order with the repeat."""
    inner, tok = load_lm(args.model)
    modes = MODES if args.repeat % 2 == 0 else MODES[::-1]
    return [await one_config(mode, n, args, inner, tok) for n in args.sessions for mode in modes]


def _counts(text: str) -> list[int]:
    counts = [int(x) for x in text.split(",") if x]
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"--sessions takes counts >= 1 like 8,32, got {text!r}")
    return counts


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--cloud", required=True, help="the cloud's own address (for its Metrics)")
    p.add_argument("--via", required=True, help="the address edges dial (the link emulator)")
    p.add_argument("--device", required=True, help="edge device profile each session emulates")
    p.add_argument("--model", default="drafter-int8", help="drafter model spec")
    p.add_argument("--sessions", type=_counts, default=[8, 32])
    p.add_argument("--requests", type=int, default=4, help="requests per session, back to back")
    p.add_argument("--max-new", type=int, default=48)
    p.add_argument("--repeat", type=int, default=0, help="repeat index (alternates mode order)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run and print the results as one JSON line."""
    args = parse(argv)
    print(json.dumps(asyncio.run(run(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
