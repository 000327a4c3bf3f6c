"""Replaying an expert trace through the cache: every policy, and Belady's MIN as the bound.

A trace is the experts each (token, layer) step asked for, in order. Replay is demand paging:
a step's experts are looked up; each miss is loaded, evicting by the policy, while the step's
other experts stay pinned. MIN evicts the resident expert whose next use lies farthest ahead;
with experts of one size no policy gets more hits on the same trace and budget (Belady 1966).
"""

from __future__ import annotations

import bisect
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from models.moe.cache import EvictionPolicy, ExpertCache, make_policy
from models.moe.layouts import ExpertKey

Trace = Sequence[tuple[ExpertKey, ...]]  # per step, the experts it needs


class Belady:
    """MIN: evict the expert whose next request comes last (never again counts as last)."""

    def __init__(self, trace: Trace) -> None:
        self.uses: dict[ExpertKey, list[int]] = {}
        for step, keys in enumerate(trace):
            for k in keys:
                self.uses.setdefault(k, []).append(step)
        self.step = 0  # the step being served; replay moves it

    def next_use(self, key: ExpertKey) -> float:
        uses = self.uses.get(key, [])
        i = bisect.bisect_right(uses, self.step)
        return uses[i] if i < len(uses) else float("inf")

    def inserted(self, key: ExpertKey, now: int) -> None:
        pass

    def accessed(self, key: ExpertKey, now: int) -> None:
        pass

    def removed(self, key: ExpertKey) -> None:
        pass

    def victim(self, candidates: Collection[ExpertKey], now: int) -> ExpertKey:
        return max(candidates, key=lambda k: (self.next_use(k), k))


@dataclass(frozen=True)
class ReplayResult:
    """Hits and requests of one replay."""

    hits: int
    requests: int

    @property
    def hit_rate(self) -> float:
        return self.hits / self.requests if self.requests else 0.0


def replay(
    trace: Trace, budget_bytes: int, expert_bytes: int, policy: EvictionPolicy
) -> ReplayResult:
    """Demand-paged replay of ``trace`` through an :class:`ExpertCache` of ``budget_bytes``."""
    cache: ExpertCache[None] = ExpertCache(budget_bytes, policy)
    for step, keys in enumerate(trace):
        if isinstance(policy, Belady):
            policy.step = step
        for k in keys:
            if cache.get(k) is None:
                cache.put(k, None, expert_bytes, pinned=keys)
    return ReplayResult(cache.stats.hits, cache.stats.hits + cache.stats.misses)


def replay_named(
    trace: Trace, budget_bytes: int, expert_bytes: int, name: str, n_layers: int
) -> ReplayResult:
    """Replay under a registry policy by name, or ``"belady"`` for MIN."""
    policy = Belady(trace) if name == "belady" else make_policy(name, n_layers)
    return replay(trace, budget_bytes, expert_bytes, policy)
