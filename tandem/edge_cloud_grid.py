"""The grid of ``tandem bench edge-cloud`` and the figures computed from what it measured (pure).

A cell is one device pair (an edge profile drafting for a cloud profile) over one link profile.
Every cell runs every policy on the same problems, ``repeats`` times, interleaved; a run's figure
is its wall time per generated token. Ratios are taken per repeat (paired: the runs of one repeat
ran back to back under the same conditions), and a figure is the median over repeats.

The runs of the grid are held as ``runs[pair][link][policy] = [one dict per repeat]``, each dict
with at least ``ms_per_token``.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node_runtime.kinds import KPolicy, Mode
from simulations.link.profiles import get_profile as get_link
from simulations.link.spec import DirectionSpec, LinkSpec
from tandem.repeats import MIN_REPEATS, Spread, paired_ratios

Runs = Mapping[str, Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]]]


@dataclass(frozen=True)
class DevicePair:
    """An edge device drafting for a cloud device, both named by their profiles."""

    edge: str  # edge profile (node_runtime.profiles), the drafter's device
    cloud: str  # cloud profile, the target's device

    @property
    def name(self) -> str:
        """``edge -> cloud``: the pair's key in tables and JSON."""
        return f"{self.edge} -> {self.cloud}"


@dataclass(frozen=True)
class Policy:
    """How a request of the grid is sent to the edge."""

    name: str  # column name in tables and JSON
    mode: Mode | None  # None: the coordinator plans (mode and k)
    pipelined: bool = False  # draft the next round while one is in flight
    k_policy: KPolicy | None = None  # None: the node's, or the plan's k when it planned


POLICIES: tuple[Policy, ...] = (
    Policy("cloud-only", Mode.CLOUD_ONLY),
    # RTT-aware k for both: the one static rule that sees the link (and, pipelined, the overlap)
    Policy("speculation", Mode.SPECULATION, k_policy=KPolicy.RTT),
    Policy("pipelined", Mode.SPECULATION, pipelined=True, k_policy=KPolicy.RTT),
    Policy("adaptive", None),
)
POLICY_NAMES = tuple(p.name for p in POLICIES)
SPECULATIVE = ("speculation", "pipelined")  # the speculation policies best_vs_cloud_only picks from
STATIC = ("cloud-only", "speculation", "pipelined")  # adaptive is compared with the best of these

# Pairs chosen so that the grid holds both sides of a crossover where there is one: a small
# drafter against a slow 70B target wins at short RTT; a laptop drafting a 1B model for an fp8
# 70B on H100s is too slow a drafter to win anywhere; a Jetson drafting a 1.1B model for a bf16
# 70B on two H100s (~29 ms a token) is predicted to cross between 5g and lte.
PAIRS: tuple[DevicePair, ...] = (
    DevicePair("rpi5/smollm2-135m-q8", "a100x4/llama3-70b-bf16"),
    DevicePair("orin-nano-super/smollm2-135m-q4", "h100/llama3-8b-bf16"),
    DevicePair("laptop-8840u/llama3.2-1b-q8", "h100x2/llama3-70b-fp8"),
    DevicePair("orin-nano/tinyllama-1.1b-q4", "h100x2/llama3-70b-bf16"),
)
LINKS: tuple[str, ...] = ("wifi", "5g", "lte", "satellite-geo")  # link profiles, RTT ascending
QUICK_LINKS: tuple[str, ...] = ("wifi", "lte", "satellite-geo")
CLOUD_BATCH = 32  # verify rounds and generations a cloud pass takes at the most: 32 sessions fit
PIPELINE_MIN_RTT_MS = 20.0  # pipelined_vs_plain is the median over cells at least this far


@dataclass(frozen=True)
class EdgeCloudConfig:
    """Sizes of one ``tandem bench edge-cloud`` run."""

    quick: bool = False  # fewer pairs, links and problems (a few minutes)
    out_dir: Path = Path("runs/bench-edge-cloud")  # plots and node logs
    repeats: int = MIN_REPEATS  # runs of every configuration, interleaved
    max_new: int = 48  # new tokens a request may generate (the bundled answers end near 30)
    settle_s: float = 2.0  # after changing the link: RTT probes and telemetry catch up
    capacity_link: str = "5g"  # link of the capacity phase
    capacity_requests: int = 0  # requests per session in the capacity phase; 0: by size
    pairs: tuple[DevicePair, ...] = field(default=PAIRS)  # device pairs of the full run

    @property
    def grid_pairs(self) -> tuple[DevicePair, ...]:
        """Device pairs measured (quick: the first two)."""
        return self.pairs[:2] if self.quick else self.pairs

    @property
    def links(self) -> tuple[str, ...]:
        """Link profiles measured, RTT ascending."""
        return QUICK_LINKS if self.quick else LINKS

    @property
    def problems(self) -> int:
        """Held-out problems of each run (one policy, one cell, one repeat)."""
        return 1 if self.quick else 4

    @property
    def capacity_pairs(self) -> tuple[DevicePair, ...]:
        """Pairs the capacity phase runs on: the first (the Pi drafting for a 70B, the headline)
        and, in the full run, the second (an Orin Nano Super, a drafter about six times faster,
        drafting for an 8B): how much a server gains depends on how fast drafts arrive."""
        return self.grid_pairs[:1] if self.quick else self.grid_pairs[:2]

    @property
    def capacity_pair(self) -> DevicePair:
        """The headline capacity pair: the first."""
        return self.grid_pairs[0]

    @property
    def sessions(self) -> tuple[int, ...]:
        """Concurrent edge sessions of the capacity phase; the last is the headline (32)."""
        return (8, 32) if self.quick else (1, 8, 32)

    @property
    def requests_per_session(self) -> int:
        """Requests each capacity session runs back to back."""
        return self.capacity_requests or (2 if self.quick else 4)


def link_spec(name: str) -> LinkSpec:
    """The link profile ``name`` without connection resets: a reset measures failover, not the
    policy, and would land on whichever policy happened to run then."""
    spec = get_link(name).spec

    def calm(d: DirectionSpec) -> DirectionSpec:
        return DirectionSpec(d.latency_ms, d.jitter_ms, d.bandwidth_mbit)

    return LinkSpec(calm(spec.uplink), calm(spec.downlink))


def link_rtt_ms(name: str) -> float:
    """Mean RTT of a small message over the link profile (latency plus mean jitter, both ways)."""
    return link_spec(name).rtt_ms


def emulated_label(pair: DevicePair, link: str | None = None) -> str:
    """What every table, JSON and plot made under profiles says it is."""
    text = f"emulated: {pair.edge} -> {pair.cloud}"
    return f"{text}, link {link}" if link else text


def cells(cfg: EdgeCloudConfig) -> list[tuple[DevicePair, str]]:
    """Every (pair, link) cell in the order they run: pair by pair (nodes restart only when the
    pair changes), links by ascending RTT."""
    return [(pair, link) for pair in cfg.grid_pairs for link in cfg.links]


def run_count(cfg: EdgeCloudConfig) -> int:
    """Runs (for the progress bar): cells x policies x repeats, and the capacity repeats."""
    return (len(cells(cfg)) * len(POLICIES) + len(cfg.capacity_pairs)) * cfg.repeats


# --------------------------------------------------------------------------- per-cell ratios


def _ms(runs: Sequence[Mapping[str, Any]]) -> list[float]:
    return [float(r["ms_per_token"]) for r in runs]


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def best_of(cell: Mapping[str, Sequence[Mapping[str, Any]]], names: Sequence[str]) -> list[float]:
    """Per repeat, the lowest ms per token among the policies ``names``."""
    return [min(vals) for vals in zip(*(_ms(cell[n]) for n in names), strict=True)]


def best_vs_cloud_only(cell: Mapping[str, Sequence[Mapping[str, Any]]]) -> Spread:
    """Best speculation policy / cloud-only, per repeat (below 1: speculation wins the cell)."""
    return Spread.of(paired_ratios(best_of(cell, SPECULATIVE), _ms(cell["cloud-only"])))


def adaptive_vs_best(cell: Mapping[str, Sequence[Mapping[str, Any]]]) -> Spread:
    """Adaptive / the best static policy of the same repeat."""
    return Spread.of(paired_ratios(_ms(cell["adaptive"]), best_of(cell, STATIC)))


def pipelined_vs_plain_cell(cell: Mapping[str, Sequence[Mapping[str, Any]]]) -> Spread:
    """Pipelined / plain speculation, per repeat."""
    return Spread.of(paired_ratios(_ms(cell["pipelined"]), _ms(cell["speculation"])))


# --------------------------------------------------------------------------- grid figures


def pipelined_vs_plain(runs: Runs, rtts: Mapping[str, float]) -> Spread | None:
    """Per repeat, the median over cells with RTT >= ``PIPELINE_MIN_RTT_MS`` of pipelined /
    plain; the spread of that over repeats. None when no cell is that far."""
    per_cell = [
        paired_ratios(_ms(cell["pipelined"]), _ms(cell["speculation"]))
        for by_link in runs.values()
        for link, cell in by_link.items()
        if rtts[link] >= PIPELINE_MIN_RTT_MS
    ]
    if not per_cell:
        return None
    return Spread.of([statistics.median(vals) for vals in zip(*per_cell, strict=True)])


def crossover(points: Sequence[tuple[float, float, float]]) -> dict[str, Any]:
    """Where the best speculation policy stops beating cloud-only as RTT grows, from cells
    ``(RTT ms, best speculation ms per token, cloud-only ms per token)`` (medians of repeats).

    Between the two neighbouring cells (by RTT) on either side, the difference speculation -
    cloud-only is taken as linear in RTT and solved for 0: each policy's time per token is
    affine in RTT while its round trips per token stay put (one per request for cloud-only,
    one per round for speculation). With no such neighbours the crossover lies outside the
    cells measured, and only its side is known.
    """
    pts = sorted((x, spec - cloud, spec / cloud) for x, spec, cloud in points)
    if not pts:
        raise ValueError("points: a crossover needs at least one cell")
    lo, hi = pts[0][0], pts[-1][0]
    crossings = [(a, b) for a, b in zip(pts, pts[1:], strict=False) if (a[1] < 0) != (b[1] < 0)]
    out: dict[str, Any] = {"rtt_ms": None, "bracket_ms": None, "crossings": len(crossings)}
    if not crossings:
        won = pts[0][1] < 0
        out["side"] = "above" if won else "below"
        out["how"] = (
            f"speculation wins at every RTT measured ({lo:g}-{hi:g} ms): crossover above {hi:g} ms"
            if won
            else f"cloud-only wins at every RTT measured ({lo:g}-{hi:g} ms): crossover below"
            f" {lo:g} ms, if any"
        )
        return out
    (x1, d1, r1), (x2, d2, r2) = crossings[0]
    noise = f"; {len(crossings)} crossings (noise), the first taken" if len(crossings) > 1 else ""
    out.update(
        rtt_ms=x1 + (x2 - x1) * d1 / (d1 - d2),
        bracket_ms=[x1, x2],
        side="inside",
        how=(
            f"between {x1:g} ms (ratio {r1:.3f}) and {x2:g} ms (ratio {r2:.3f}), ms per token of"
            f" speculation minus cloud-only taken as linear in RTT and solved for 0{noise}"
        ),
    )
    return out


def grid_figures(runs: Runs, rtts: Mapping[str, float]) -> dict[str, Any]:
    """Every grid key: per cell ratios, cells won, crossover per pair, adaptive's worst cell."""
    best: dict[str, dict[str, Any]] = {}
    adaptive: dict[str, dict[str, Any]] = {}
    pipe: dict[str, dict[str, Any]] = {}
    cross: dict[str, Any] = {}
    for pair, by_link in runs.items():
        best[pair], adaptive[pair], pipe[pair] = {}, {}, {}
        for link, cell in by_link.items():
            best[pair][link] = best_vs_cloud_only(cell).as_dict()
            adaptive[pair][link] = adaptive_vs_best(cell).as_dict()
            pipe[pair][link] = pipelined_vs_plain_cell(cell).as_dict()
        cross[pair] = crossover(
            [
                (rtts[link], _median(best_of(cell, SPECULATIVE)), _median(_ms(cell["cloud-only"])))
                for link, cell in by_link.items()
            ]
        )
    worst = max(
        ((pair, link, v) for pair, d in adaptive.items() for link, v in d.items()),
        key=lambda t: t[2]["median"],
    )
    pvp = pipelined_vs_plain(runs, rtts)
    won = sum(v["median"] < 1.0 for d in best.values() for v in d.values())
    return {
        "pipelined_vs_plain": pvp.as_dict() if pvp else None,
        "pipelined_vs_plain_cells": pipe,
        "best_vs_cloud_only": best,
        "cells_won": won,
        "cells": sum(len(d) for d in best.values()),
        "crossover_rtt": cross,
        "adaptive_worst_cell": worst[2]["median"],
        "adaptive_worst_cell_at": f"{worst[0]}, link {worst[1]}",
        "adaptive_vs_best_static": adaptive,
    }


# --------------------------------------------------------------------------- capacity


def capacity_figures(
    spec: Sequence[Mapping[str, float]], cloud: Sequence[Mapping[str, float]]
) -> dict[str, Any]:
    """Capacity keys from paired runs (one per repeat) at one session count.

    Each run holds ``tokens`` generated, ``device_s`` (emulated cloud device-seconds spent on
    them) and ``wall_s``; speculation runs also ``drafted`` and ``accepted``. Capacity is tokens
    per cloud device-second; the cost per token is its inverse.
    """

    def per(runs: Sequence[Mapping[str, float]], num: str, den: str) -> list[float]:
        return [r[num] / r[den] if r[den] else float("nan") for r in runs]

    cap_s, cap_c = per(spec, "tokens", "device_s"), per(cloud, "tokens", "device_s")
    cost_s, cost_c = per(spec, "device_s", "tokens"), per(cloud, "device_s", "tokens")
    acc = [r["accepted"] / r["drafted"] for r in spec if r.get("drafted")]
    passes = {
        name: Spread.of(per(runs, "tokens", "cloud_passes")).as_dict()
        for name, runs in (("speculation", spec), ("cloud-only", cloud))
        if all("cloud_passes" in r for r in runs)
    }
    rounds = [
        r["cloud_rounds"] / r["cloud_verify_passes"] for r in spec if r.get("cloud_verify_passes")
    ]
    return {
        "capacity_gain": Spread.of(paired_ratios(cap_s, cap_c)).as_dict(),
        "cloud_cost_per_token_ratio": Spread.of(paired_ratios(cost_s, cost_c)).as_dict(),
        "tokens_per_device_s": {
            "speculation": Spread.of(cap_s).as_dict(),
            "cloud-only": Spread.of(cap_c).as_dict(),
        },
        "delivered_tokens_per_s": {
            "speculation": Spread.of(per(spec, "tokens", "wall_s")).as_dict(),
            "cloud-only": Spread.of(per(cloud, "tokens", "wall_s")).as_dict(),
        },
        "acceptance_rate": Spread.of(acc).as_dict() if acc else None,
        # why capacity differs: tokens a cloud pass produced, and rounds a verify pass held
        "tokens_per_cloud_pass": passes,
        "rounds_per_verify_pass": Spread.of(rounds).as_dict() if rounds else None,
    }
