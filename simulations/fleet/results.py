"""What a run reports: per-request records and their summary (latency, use, cost, energy).

Latency is per request, end to end: from its arrival at its device to its last token at the
edge (queueing on a busy device included). Percentiles are over finished requests; requests
still in flight when the run stops are counted in ``unfinished`` (an overloaded run shows there).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from simulations.fleet.config import as_table
from simulations.fleet.prices import cloud_price, edge_power_w

if TYPE_CHECKING:
    from simulations.fleet.fleet import Fleet


@dataclass(frozen=True)
class RequestRecord:
    """One finished request."""

    arrival: float  # s, when it reached its device
    start: float  # s, when its device started it
    end: float  # s, when its last token reached the edge
    ttft: float  # s, when its first token reached the edge (absolute)
    tokens: int  # tokens generated
    device: int  # device index
    mode: str  # the mode it ran in
    degraded: bool  # it finished on the drafter alone after losing every cloud
    rounds: int  # verify rounds (or steps)
    drafted: int  # draft tokens sent
    accepted: int  # draft tokens kept
    clouds: int  # clouds it ran on (more than 1: it failed over)

    @property
    def latency(self) -> float:
        """End-to-end seconds."""
        return self.end - self.arrival


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between order statistics; NaN when empty."""
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def latency_stats(values: Sequence[float], prefix: str) -> dict[str, float]:
    """p50, p95, p99 and mean of ``values`` in seconds, keys ``{prefix}_p50_s`` ..."""
    mean = sum(values) / len(values) if values else math.nan
    out = {f"{prefix}_p{q}_s": percentile(values, q) for q in (50, 95, 99)}
    out[f"{prefix}_mean_s"] = mean
    return out


def timeline(
    recs: Sequence[RequestRecord], duration_s: float, buckets: int = 60
) -> list[list[float]]:
    """Latency by arrival time: ``[bucket start s, requests, p50 s, p95 s]`` per bucket."""
    width = max(duration_s / buckets, 1e-9)
    by: dict[int, list[float]] = {}
    for r in recs:
        by.setdefault(min(int(r.arrival / width), buckets - 1), []).append(r.latency)
    return [
        [i * width, len(v), percentile(v, 50), percentile(v, 95)] for i, v in sorted(by.items())
    ]


def summarize(f: Fleet, unfinished: int, wall_s: float, events: int) -> dict[str, Any]:
    """Every figure of one run."""
    cfg, recs = f.cfg, f.records
    span = max(f.env.now, 1e-9)
    tokens = sum(r.tokens for r in recs)
    out: dict[str, Any] = {"requests": len(recs), "unfinished": max(unfinished, 0)}
    out.update(latency_stats([r.latency for r in recs], "latency"))
    out.update(latency_stats([r.ttft - r.arrival for r in recs if r.ttft >= 0], "ttft"))
    out["tokens"] = tokens
    out["tokens_per_s"] = tokens / span
    busy = sum(c.busy_s for c in f.clouds)
    out["cloud_utilization"] = busy / (span * len(f.clouds)) if f.clouds else 0.0
    out["cloud_busy_s"] = busy
    price = cloud_price(cfg.cloud_profile)
    out["cloud_usd"] = price * len(f.clouds) * span / 3600  # rented for the whole run
    out["cloud_usd_busy"] = price * busy / 3600  # paid per busy device-second
    out["cloud_usd_per_1k_tokens"] = 1e3 * out["cloud_usd"] / tokens if tokens else math.nan
    out["edge_busy_s"] = f.edge_busy_s
    out["edge_j_per_token"] = (
        f.edge_busy_s * edge_power_w(cfg.edge_profile) / tokens if tokens else math.nan
    )
    drafted = sum(r.drafted for r in recs)
    out["acceptance_rate"] = sum(r.accepted for r in recs) / drafted if drafted else math.nan
    out["rounds"] = sum(r.rounds for r in recs)
    passes = sum(c.verify_passes for c in f.clouds)
    out["rounds_per_verify_pass"] = (
        sum(c.rounds_served for c in f.clouds) / passes if passes else 0.0
    )
    out["cloud_passes"] = sum(c.passes for c in f.clouds)
    out["failovers"] = f.failovers
    out["link_resets"] = f.link_resets
    out["degraded"] = sum(r.degraded for r in recs)
    modes: dict[str, int] = {}
    for r in recs:
        modes[r.mode] = modes.get(r.mode, 0) + 1
    out["modes"] = modes
    out["timeline"] = timeline(recs, cfg.duration_s)
    out["sim_time_s"] = span
    out["wall_s"] = wall_s
    out["events"] = events
    out["events_per_s"] = events / wall_s if wall_s > 0 else math.nan
    out["config"] = as_table(cfg)
    return out
