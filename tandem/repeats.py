"""Repeated, interleaved measurements and their median and spread, for every benchmark.

A benchmark that compares configurations runs them in turns (A, B, C, A, B, C, ...), so a slow
spell of the machine lands on every configuration rather than on one of them. Each figure is then
reported as its median over the repeats with its range, and a target is met when the median
meets it.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
MIN_REPEATS = 3  # every configuration runs at least this many times
OPS = ("==", ">=", "<=")


@dataclass(frozen=True)
class Spread:
    """One figure over repeats: its median and its range."""

    median: float  # the reported value
    low: float  # smallest repeat
    high: float  # largest repeat
    values: tuple[float, ...]  # every repeat, in the order they ran

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        """The spread of ``values`` (at least one)."""
        if not values:
            raise ValueError("values: a spread needs at least one repeat")
        vs = tuple(float(v) for v in values)
        return cls(statistics.median(vs), min(vs), max(vs), vs)

    @property
    def n(self) -> int:
        """How many repeats."""
        return len(self.values)

    def as_dict(self) -> dict[str, Any]:
        """JSON form: median, min, max, n and the values."""
        return {
            "median": self.median,
            "min": self.low,
            "max": self.high,
            "n": self.n,
            "values": list(self.values),
        }


@dataclass(frozen=True)
class Target:
    """A bound a figure's median must meet."""

    op: str  # one of OPS
    bound: float  # the value the median is compared with

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"op: {self.op!r} is not one of {OPS}")

    def met(self, figure: Spread | float) -> bool:
        """Whether the figure's median (or the value itself) meets the bound."""
        v = figure.median if isinstance(figure, Spread) else float(figure)
        if self.op == "==":
            return v == self.bound
        return v >= self.bound if self.op == ">=" else v <= self.bound

    def __str__(self) -> str:
        return f"{self.op} {self.bound:g}"


def interleaved(
    configs: Mapping[str, Callable[[], T]],
    repeats: int = MIN_REPEATS,
    on_run: Callable[[str, int], None] | None = None,
) -> dict[str, list[T]]:
    """Run every configuration ``repeats`` times in turns; each one's results in run order.

    ``on_run(name, repeat)`` is called before each run (for progress output).
    """
    if repeats < 1:
        raise ValueError(f"repeats: {repeats} is below 1")
    out: dict[str, list[T]] = {name: [] for name in configs}
    for rep in range(repeats):
        for name, run in configs.items():
            if on_run is not None:
                on_run(name, rep)
            out[name].append(run())
    return out


def spreads(runs: Sequence[Mapping[str, float]]) -> dict[str, Spread]:
    """Per key, the spread over ``runs`` (one mapping per repeat) of the keys all runs share."""
    if not runs:
        return {}
    keys = [k for k in runs[0] if all(k in r for r in runs[1:])]
    return {k: Spread.of([float(r[k]) for r in runs]) for k in keys}


def paired_ratios(num: Sequence[float], den: Sequence[float]) -> list[float]:
    """num[i] / den[i] per repeat: interleaved neighbours ran under the same conditions, so a
    ratio within one repeat is steadier than a ratio of medians. NaN where den[i] is 0."""
    if len(num) != len(den):
        raise ValueError(f"paired ratios need as many numerators ({len(num)}) as denominators")
    return [n / d if d else float("nan") for n, d in zip(num, den, strict=True)]
