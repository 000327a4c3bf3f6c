"""Guided strategies: A*-style best-first decoding, particle filtering with entropic annealing."""

from __future__ import annotations

import heapq
import itertools
import math

import numpy as np

from models.reasoning.proposer import StepProposer
from models.reasoning.protocols import StepScorer
from models.reasoning.search_core import (
    Budget,
    Ledger,
    Node,
    SearchConfig,
    SearchResult,
    best,
    reject,
)


def a_star(
    question: str, proposer: StepProposer, scorer: StepScorer, budget: Budget, config: SearchConfig
) -> SearchResult:
    """Best-first search: always expand the most promising partial solution.

    The frontier is a priority queue ordered by the aggregated PRM score (ties: deeper first,
    then older), which plays the role of A*'s f = g + h with the PRM as the estimate of how
    likely the path still ends right. The first finished solution popped is the answer, so an
    easy problem costs about one scored candidate per step. Children are sampled, not
    enumerated, so an expanded node goes back into the queue at its value times
    ``retry_decay`` per expansion: when all its children look worse than that, it is sampled
    again instead of the search diving down a bad branch, up to ``max_expansions`` times (an
    exact scorer gives wrong steps 0, so without the cap one hard step would eat the budget).
    Repeated steps are scored once.
    """
    c = config
    ledger = Ledger(question, proposer, scorer, budget, config)
    order = itertools.count()
    root = Node()
    frontier: list[tuple[float, int, int, Node, int]] = [(-1.0, 0, next(order), root, 0)]
    seen: set[tuple[str, ...]] = set()
    scored_nodes: list[Node] = []
    while frontier and ledger.tokens_left > 0:
        _, _, _, node, expansions = heapq.heappop(frontier)
        if node.finished:
            return ledger.result(node)
        kids = [k for k in ledger.expand([node], c.m, unique=True)[0] if k.steps not in seen]
        scored = ledger.score(kids)
        if scored is None:
            break
        value = node.value(c.aggregation) if node.steps else 1.0
        if expansions + 1 < c.max_expansions:
            retry = value * c.retry_decay ** (expansions + 1)
            heapq.heappush(frontier, (-retry, -len(node.steps), next(order), node, expansions + 1))
        for kid in reject(scored, c.aggregation, c.reject_margin):
            seen.add(kid.steps)
            scored_nodes.append(kid)
            key = (-kid.value(c.aggregation), -len(kid.steps), next(order), kid, 0)
            heapq.heappush(frontier, key)
    return ledger.result(best(scored_nodes, c.aggregation))


def tempered_weights(values: np.ndarray, entropy_floor: float) -> np.ndarray:
    """Resampling weights values**beta with the largest beta in [0, 1] keeping enough entropy.

    PRMs are overconfident early, so raw weights collapse the population onto a few particles;
    ePF flattens them (beta < 1) just enough that the normalised entropy H(w)/log(N) stays at or
    above ``entropy_floor``. beta = 0 is uniform (entropy 1), so a solution always exists.
    """
    v = np.clip(values.astype(np.float64), 1e-6, None)
    if len(v) < 2:
        return np.ones_like(v)

    def weights(beta: float) -> np.ndarray:
        w = np.exp(beta * np.log(v) - (beta * np.log(v)).max())
        return w / w.sum()

    def entropy(w: np.ndarray) -> float:
        nz = w[w > 0]
        return float(-(nz * np.log(nz)).sum() / math.log(len(w)))

    if entropy(weights(1.0)) >= entropy_floor:
        return weights(1.0)
    lo, hi = 0.0, 1.0  # entropy falls as beta grows: bisect for the floor
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if entropy(weights(mid)) >= entropy_floor else (lo, mid)
    return weights(lo)


def systematic_resample(weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """N indices drawn with one uniform offset: lower variance than multinomial resampling."""
    n = len(weights)
    points = (rng.random() + np.arange(n)) / n
    return np.minimum(np.searchsorted(np.cumsum(weights), points), n - 1)


def particle_filter(
    question: str, proposer: StepProposer, scorer: StepScorer, budget: Budget, config: SearchConfig
) -> SearchResult:
    """N particles advance one step at a time; weight by PRM score, temper, resample.

    Finished particles stay in the population (they carry their final score and stop drafting),
    so resampling moves compute away from weak partial solutions towards strong ones.
    """
    c = config
    ledger = Ledger(question, proposer, scorer, budget, config)
    rng = np.random.default_rng(c.seed)
    particles = [Node()] * c.n
    while any(not p.finished for p in particles):
        live = [i for i, p in enumerate(particles) if not p.finished]
        rows = ledger.expand([particles[i] for i in live], 1)
        if any(not row for row in rows):  # the token cap cut a step: stop with what we have
            break
        scored = ledger.score([row[0] for row in rows])
        if scored is None:
            break
        for i, kid in zip(live, scored, strict=True):
            particles[i] = kid
        values = np.array([p.value(c.aggregation) for p in particles])
        idx = systematic_resample(tempered_weights(values, c.entropy_floor), rng)
        particles = [particles[j] for j in idx]
    return ledger.result(best(particles, c.aggregation))
