"""The resident tier: experts held under a byte budget, evicted by a policy from one registry.

Every policy has one signature, ``factory(n_layers) -> EvictionPolicy``, and sees the same
events (insert, access, removal); the cache asks it for a victim among the unpinned residents.
The same cache serves live decoding and trace replay (``models.moe.belady``), so the hit rates a
replay reports are the ones the live cache would get on that trace.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection, Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from models.moe.layouts import ExpertKey

V = TypeVar("V")


class EvictionPolicy(Protocol):
    """Chooses which resident expert to drop."""

    def inserted(self, key: ExpertKey, now: int) -> None: ...

    def accessed(self, key: ExpertKey, now: int) -> None: ...

    def removed(self, key: ExpertKey) -> None: ...

    def victim(self, candidates: Collection[ExpertKey], now: int) -> ExpertKey:
        """The candidate to evict (``candidates`` is never empty)."""
        ...


class LRU:
    """Evict the expert used least recently."""

    def __init__(self, n_layers: int) -> None:
        self.last: dict[ExpertKey, int] = {}

    def inserted(self, key: ExpertKey, now: int) -> None:
        self.last[key] = now

    def accessed(self, key: ExpertKey, now: int) -> None:
        self.last[key] = now

    def removed(self, key: ExpertKey) -> None:
        self.last.pop(key, None)

    def victim(self, candidates: Collection[ExpertKey], now: int) -> ExpertKey:
        return min(candidates, key=lambda k: self.last.get(k, -1))


class LFU(LRU):
    """Evict the expert used least often over the whole run (ties: least recently)."""

    def __init__(self, n_layers: int) -> None:
        super().__init__(n_layers)
        self.count: dict[ExpertKey, int] = {}  # kept across evictions: popularity is per expert

    def accessed(self, key: ExpertKey, now: int) -> None:
        super().accessed(key, now)
        self.count[key] = self.count.get(key, 0) + 1

    def victim(self, candidates: Collection[ExpertKey], now: int) -> ExpertKey:
        return min(candidates, key=lambda k: (self.count.get(k, 0), self.last.get(k, -1)))


class ShallowFavoring(LRU):
    """Fate's split: early layers get more of the budget, since prediction serves them worst
    (nothing predicts layer 0). Layer l's share is 1 + favor x (L-1-l)/(L-1); the victim is the
    least recently used expert of the layer holding the most experts per unit of share."""

    def __init__(self, n_layers: int, favor: float = 1.0) -> None:
        super().__init__(n_layers)
        span = max(1, n_layers - 1)
        self.share = [1.0 + favor * (n_layers - 1 - layer) / span for layer in range(n_layers)]

    def victim(self, candidates: Collection[ExpertKey], now: int) -> ExpertKey:
        held: dict[int, int] = {}
        for k in self.last:
            held[k.layer] = held.get(k.layer, 0) + 1
        layers = {k.layer for k in candidates}
        worst = max(layers, key=lambda layer: (held.get(layer, 0) / self.share[layer], layer))
        return super().victim([k for k in candidates if k.layer == worst], now)


POLICIES: dict[str, Callable[[int], EvictionPolicy]] = {
    "lru": LRU,
    "lfu": LFU,
    "shallow": ShallowFavoring,
}
"""Every eviction policy by name; each takes the model's number of MoE layers."""


def make_policy(name: str, n_layers: int) -> EvictionPolicy:
    """The policy ``name`` for a model of ``n_layers`` MoE layers."""
    if name not in POLICIES:
        raise ValueError(f"policy: {name!r} is not one of {sorted(POLICIES)}")
    return POLICIES[name](n_layers)


@dataclass
class CacheStats:
    """What the resident tier saw."""

    hits: int = 0  # lookups that found the expert resident
    misses: int = 0  # lookups that did not
    inserts: int = 0
    evictions: int = 0


class ExpertCache(Generic[V]):
    """Resident experts under a byte budget; ``get`` counts hits, ``put`` evicts to fit."""

    def __init__(self, budget_bytes: int, policy: EvictionPolicy) -> None:
        if budget_bytes < 0:
            raise ValueError(f"budget_bytes: {budget_bytes} is negative")
        self.budget_bytes = budget_bytes
        self.policy = policy
        self.used_bytes = 0
        self.stats = CacheStats()
        self._items: dict[ExpertKey, tuple[V, int]] = {}
        self._clock = itertools.count()

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def keys(self) -> list[ExpertKey]:
        return list(self._items)

    def get(self, key: ExpertKey) -> V | None:
        """The resident value, or None; counts a hit or a miss and tells the policy."""
        item = self._items.get(key)
        now = next(self._clock)
        if item is None:
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        self.policy.accessed(key, now)
        return item[0]

    def peek(self, key: ExpertKey) -> V | None:
        """The resident value without counting an access."""
        item = self._items.get(key)
        return None if item is None else item[0]

    def put(
        self, key: ExpertKey, value: V, nbytes: int, pinned: Iterable[ExpertKey] = ()
    ) -> list[ExpertKey]:
        """Make ``key`` resident, evicting unpinned experts until it fits; the evicted keys.

        An expert larger than what unpinned eviction can free is not inserted (returns [])."""
        if key in self._items:
            return []
        keep = set(pinned)
        evictable = self.used_bytes - sum(self._items[k][1] for k in keep if k in self._items)
        if nbytes > self.budget_bytes - self.used_bytes + evictable:
            return []
        now = next(self._clock)
        evicted = []
        while self.used_bytes + nbytes > self.budget_bytes:
            victim = self.policy.victim([k for k in self._items if k not in keep], now)
            self.remove(victim)
            evicted.append(victim)
        self._items[key] = (value, nbytes)
        self.used_bytes += nbytes
        self.stats.inserts += 1
        self.policy.inserted(key, now)
        self.policy.accessed(key, now)
        return evicted

    def remove(self, key: ExpertKey) -> None:
        """Drop ``key`` if resident."""
        item = self._items.pop(key, None)
        if item is not None:
            self.used_bytes -= item[1]
            self.stats.evictions += 1
            self.policy.removed(key)
