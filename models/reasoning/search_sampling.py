"""Sampling-based strategies: greedy baseline, best-of-N (naive, weighted, majority), beam, DVTS.

All partial solutions of a round advance together, so each round is one batched proposer call
and at most one batched scorer call.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

from models.reasoning.proposer import StepProposer
from models.reasoning.protocols import StepScorer
from models.reasoning.search_core import (
    Budget,
    Ledger,
    Node,
    SearchConfig,
    SearchResult,
    answer_of,
    best,
    reject,
)


def greedy(
    question: str, proposer: StepProposer, scorer: StepScorer, budget: Budget, config: SearchConfig
) -> SearchResult:
    """The proposer's greedy solution, unscored: the baseline every search must beat."""
    ledger = Ledger(question, proposer, scorer, budget, replace(config, temperature=0.0))
    node = Node()
    while not node.finished:
        kids = ledger.expand([node], 1)[0]
        if not kids:
            break
        node = kids[0]
    return ledger.result(node, score=0.0)


def sample_solutions(ledger: Ledger, n: int) -> list[Node]:
    """``n`` solutions sampled step by step; unfinished ones only if the budget ran out.

    With a rejection margin every round is scored and laggards stop drafting early; without
    one, only the finished solutions are scored, once, at the end.
    """
    c = ledger.config
    live, done = [Node()] * n, []
    while live:
        kids = [row[0] for row in ledger.expand(live, 1) if row]
        if not kids:
            break
        if c.reject_margin is not None:
            scored = ledger.score(kids)
            if scored is None:
                break
            kids = reject(scored, c.aggregation, c.reject_margin)
        done += [k for k in kids if k.finished]
        live = [k for k in kids if not k.finished]
    pool = done or live
    unscored = [nd for nd in pool if not nd.scores and nd.steps][: max(0, ledger.scores_left)]
    scored = ledger.score(unscored) or []
    return [*[nd for nd in pool if nd.scores], *scored]


def best_of_n(
    question: str, proposer: StepProposer, scorer: StepScorer, budget: Budget, config: SearchConfig
) -> SearchResult:
    """Naive best-of-N: the sampled solution with the highest aggregated score."""
    ledger = Ledger(question, proposer, scorer, budget, config)
    return ledger.result(best(sample_solutions(ledger, config.n), config.aggregation))


def best_of_n_weighted(
    question: str, proposer: StepProposer, scorer: StepScorer, budget: Budget, config: SearchConfig
) -> SearchResult:
    """Weighted best-of-N: the answer whose solutions' scores sum highest."""
    ledger = Ledger(question, proposer, scorer, budget, config)
    nodes = sample_solutions(ledger, config.n)
    totals: dict[str | None, float] = defaultdict(float)
    for nd in nodes:
        totals[answer_of(nd.steps, config.answer_prefix)] += nd.value(config.aggregation)
    if not totals:
        return ledger.result(None)
    answer = max(totals, key=lambda a: (a is not None, totals[a]))
    chosen = best(
        [nd for nd in nodes if answer_of(nd.steps, config.answer_prefix) == answer],
        config.aggregation,
    )
    return ledger.result(chosen, score=totals[answer])


def majority_vote(
    question: str, proposer: StepProposer, scorer: StepScorer, budget: Budget, config: SearchConfig
) -> SearchResult:
    """Self-consistency: the most frequent answer of N samples; the scorer is never called."""
    ledger = Ledger(question, proposer, scorer, budget, config)
    live, done = [Node()] * config.n, []
    while live:
        kids = [row[0] for row in ledger.expand(live, 1) if row]
        if not kids:
            break
        done += [k for k in kids if k.finished]
        live = [k for k in kids if not k.finished]
    votes: dict[str, int] = defaultdict(int)
    for nd in done:
        if (a := answer_of(nd.steps, config.answer_prefix)) is not None:
            votes[a] += 1
    if not votes:
        return ledger.result(done[0] if done else None, score=0.0)
    answer = max(votes, key=votes.__getitem__)
    chosen = next(nd for nd in done if answer_of(nd.steps, config.answer_prefix) == answer)
    return ledger.result(chosen, score=votes[answer] / len(done))


def beam_search(
    question: str, proposer: StepProposer, scorer: StepScorer, budget: Budget, config: SearchConfig
) -> SearchResult:
    """Keep the top N/M partial solutions, expand each with M candidates, score, repeat.

    The root is expanded with N so the first beam is full; a finished solution takes its beam
    slot, so the search ends when N/M solutions are finished (or nothing is left to expand).
    """
    c = config
    ledger = Ledger(question, proposer, scorer, budget, config)
    width = max(1, c.n // c.m)
    live, done = [Node()], []
    fan = c.n
    while live:
        kids = [k for row in ledger.expand(live, fan) for k in row]
        scored = ledger.score(kids) if kids else None
        if scored is None:
            break
        scored = reject(scored, c.aggregation, c.reject_margin)
        done += [k for k in scored if k.finished]
        rest = sorted((k for k in scored if not k.finished), key=lambda k: -k.value(c.aggregation))
        live, fan = rest[: max(0, width - len(done))], c.m
    return ledger.result(best(done or live, c.aggregation))


def dvts(
    question: str, proposer: StepProposer, scorer: StepScorer, budget: Budget, config: SearchConfig
) -> SearchResult:
    """Diverse verifier tree search: N/M independent subtrees, each a beam of width one.

    Each subtree starts from its own first step and keeps the best of M expansions per round;
    the subtrees' leaves advance in one batch, and the best finished leaf wins.
    """
    c = config
    ledger = Ledger(question, proposer, scorer, budget, config)
    roots = [k for row in ledger.expand([Node()], max(1, c.n // c.m)) for k in row]
    leaves = ledger.score(roots) or []
    while True:
        live = [i for i, lf in enumerate(leaves) if not lf.finished]
        rows = ledger.expand([leaves[i] for i in live], c.m, unique=True)
        flat = [k for row in rows for k in row]
        scored = ledger.score(flat) if flat else None
        if scored is None:
            break
        start = 0
        for i, row in zip(live, rows, strict=True):
            kids = reject(scored[start : start + len(row)], c.aggregation, c.reject_margin)
            start += len(row)
            leaves[i] = best(kids, c.aggregation) or leaves[i]
    return ledger.result(best(leaves, c.aggregation))
