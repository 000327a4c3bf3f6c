"""Requests and when they arrive: Poisson, bursty (MMPP) or replayed from a CSV trace.

A fleet of independent Poisson devices is one Poisson stream at N x the rate whose requests land
on uniformly drawn devices (superposition), so arrivals are drawn fleet-wide, in time order, from
one seeded generator: the same seed gives the same workload whatever else the config changes.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from simulations.fleet.config import ArrivalKind, FleetConfig

TRACE_COLUMNS = ("time_s", "device", "prompt_tokens", "new_tokens")


@dataclass(frozen=True)
class Arrival:
    """One request: when, on which device, how long its prompt and its reply."""

    time_s: float  # arrival time since the start
    device: int  # device index, 0..devices-1
    prompt_tokens: int  # prompt length
    new_tokens: int  # reply length (tokens generated)


def workload(cfg: FleetConfig) -> list[Arrival]:
    """Every request of the run, in time order."""
    a = cfg.arrivals
    if a.kind is ArrivalKind.TRACE:
        return read_trace(a.trace, cfg.devices)
    rng = random.Random(f"arrivals:{cfg.seed}")
    if a.kind is ArrivalKind.POISSON:
        times = poisson_times(rng, a.rate_per_device * cfg.devices, cfg.duration_s)
    else:
        times = mmpp_times(
            rng,
            a.rate_per_device * cfg.devices,
            a.burst_factor,
            a.mean_calm_s,
            a.mean_burst_s,
            cfg.duration_s,
        )
    n = cfg.devices
    return [Arrival(t, rng.randrange(n), cfg.prompt_tokens, cfg.new_tokens) for t in times]


def poisson_times(rng: random.Random, rate: float, horizon: float) -> list[float]:
    """Arrival times of a Poisson process of ``rate`` per second on [0, horizon)."""
    out: list[float] = []
    if rate <= 0:
        return out
    t = rng.expovariate(rate)
    while t < horizon:
        out.append(t)
        t += rng.expovariate(rate)
    return out


def mmpp_times(
    rng: random.Random,
    rate: float,
    burst_factor: float,
    mean_calm_s: float,
    mean_burst_s: float,
    horizon: float,
) -> list[float]:
    """A two-state MMPP: calm at ``rate``, bursting at ``rate x burst_factor``; state holding
    times are exponential with the given means. Starts calm."""
    if mean_calm_s <= 0 or mean_burst_s <= 0 or burst_factor <= 0:
        raise ValueError("mmpp: mean_calm_s, mean_burst_s and burst_factor must be > 0")
    out: list[float] = []
    t, bursting = 0.0, False
    while t < horizon:
        hold = rng.expovariate(1 / (mean_burst_s if bursting else mean_calm_s))
        end = min(t + hold, horizon)
        r = rate * (burst_factor if bursting else 1.0)
        out += [t + x for x in poisson_times(rng, r, end - t)]
        t, bursting = end, not bursting
    return out


def read_trace(path: str | Path, devices: int) -> list[Arrival]:
    """Arrivals from a CSV with columns ``TRACE_COLUMNS`` (a header row); devices past the fleet
    wrap around. Sorted by time."""
    if not path:
        raise ValueError("arrivals.trace: a trace needs a CSV path")
    rows: list[Arrival] = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = set(TRACE_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"trace {path}: missing columns {sorted(missing)}")
        for i, row in enumerate(reader, start=2):
            try:
                rows.append(
                    Arrival(
                        float(row["time_s"]),
                        int(row["device"]) % max(devices, 1),
                        int(row["prompt_tokens"]),
                        int(row["new_tokens"]),
                    )
                )
            except ValueError as exc:
                raise ValueError(f"trace {path}, line {i}: {exc}") from None
    return sorted(rows, key=lambda a: a.time_s)


def write_trace(path: str | Path, arrivals: Iterable[Arrival]) -> None:
    """Write arrivals as a CSV that ``read_trace`` reads back."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(TRACE_COLUMNS)
        for a in arrivals:
            w.writerow([f"{a.time_s:.6f}", a.device, a.prompt_tokens, a.new_tokens])


def offered_tokens(arrivals: Sequence[Arrival]) -> int:
    """Tokens the workload asks for in all."""
    return sum(a.new_tokens for a in arrivals)
