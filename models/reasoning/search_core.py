"""What every search strategy shares: budget, account, config, result, nodes and the ledger.

The ledger is the only way a strategy drafts or scores, so the account is exact and the budget
is checked before work is done, never after: a search stops with the best it has, it never
overdraws.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from models.reasoning.proposer import STEP_DELIMITER, StepDraft, StepProposer, joiner_for
from models.reasoning.protocols import StepScorer

ANSWER_PREFIX = "A "  # the bundled task's answer step starts with this (the default)


@dataclass(frozen=True)
class Budget:
    """Upper bounds on a search's work."""

    max_tokens: int = 4096  # drafted tokens, over all candidates
    max_scored: int = 512  # scorer evaluations of a partial solution (one PRM pass per item)


@dataclass
class Account:
    """Work a search did."""

    tokens: int = 0  # drafted tokens, delimiters included
    proposer_calls: int = 0  # batched proposer calls
    scored: int = 0  # partial solutions scored (PRM passes over one sequence)
    scorer_calls: int = 0  # batched scorer calls
    steps_scored: int = 0  # steps inside the scored partial solutions
    seconds: float = 0.0  # wall time of the search


@dataclass(frozen=True)
class SearchConfig:
    """Parameters shared by all strategies; each reads the fields it needs."""

    n: int = 8  # samples (best-of-N), total beam width (beam, DVTS), particles
    m: int = 4  # expansions per node (beam, DVTS, A*); N/M beams or subtrees are kept
    temperature: float = 0.7  # drafter sampling temperature (0.7 searched better than 1.0 here)
    max_steps: int = 8  # a solution is finished after this many steps
    aggregation: str = "min"  # step scores -> solution score: "last", "min" or "product"
    reject_margin: float | None = None  # drop candidates scoring this far below the best
    entropy_floor: float = 0.5  # particle filter: tempered weights keep this normalised entropy
    retry_decay: float = 0.5  # A*: an expanded node is re-queued at its value times this
    max_expansions: int = 8  # A*: times one node may be sampled before it leaves the queue
    seed: int = 0  # seeds every proposer call of the search
    delimiter: str = STEP_DELIMITER  # ends a step; joins the chosen solution's steps in its text
    answer_prefix: str = ANSWER_PREFIX  # a step starting with this states the final answer

    @property
    def joiner(self) -> str:
        """What separates steps in a solution's text, from the request's delimiter."""
        return joiner_for(self.delimiter)

    def __post_init__(self) -> None:
        if min(self.n, self.m, self.max_steps, self.max_expansions) < 1:
            raise ValueError("n, m, max_steps and max_expansions must be >= 1")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {sorted(AGGREGATIONS)}")


AGGREGATIONS = {
    "last": lambda s: s[-1],
    "min": min,
    "product": lambda s: math.prod(s),
}


def aggregate(scores: Sequence[float], how: str) -> float:
    """A solution's score from its step scores (0.0 for no steps)."""
    return float(AGGREGATIONS[how](scores)) if scores else 0.0


def answer_of(steps: Sequence[str], prefix: str = ANSWER_PREFIX) -> str | None:
    """The answer the last step states, if it is an answer step (one starting with ``prefix``)."""
    if steps and steps[-1].startswith(prefix):
        return steps[-1][len(prefix) :].strip()
    return None


@dataclass(frozen=True)
class Node:
    """A partial solution in a search: its steps, their scores, whether it is finished."""

    steps: tuple[str, ...] = ()  # steps so far
    scores: tuple[float, ...] = ()  # one score per step (empty when not scored)
    finished: bool = False  # answer step written, sequence ended or max_steps reached

    def value(self, how: str) -> float:
        """Aggregated score of the steps so far."""
        return aggregate(self.scores, how)


@dataclass(frozen=True)
class SearchResult:
    """What a strategy returns."""

    answer: str | None  # the final answer text (after "A "), None if none was reached
    steps: tuple[str, ...]  # the chosen solution's steps
    text: str  # the chosen solution as one text
    score: float  # its aggregated score (vote share for majority vote)
    finished: bool  # whether the chosen solution is finished
    account: Account = field(default_factory=Account)  # work done


class Strategy(Protocol):
    """The one signature of every search strategy in the registry."""

    def __call__(
        self,
        question: str,
        proposer: StepProposer,
        scorer: StepScorer,
        budget: Budget,
        config: SearchConfig,
    ) -> SearchResult: ...


class Ledger:
    """Drafts and scores through the budget, keeping the account."""

    def __init__(
        self,
        question: str,
        proposer: StepProposer,
        scorer: StepScorer,
        budget: Budget,
        config: SearchConfig,
    ) -> None:
        self.question, self.proposer, self.scorer = question, proposer, scorer
        self.budget, self.config = budget, config
        self.account = Account()
        self._start = time.perf_counter()
        self._round = 0

    @property
    def tokens_left(self) -> int:
        """Drafted tokens still allowed."""
        return self.budget.max_tokens - self.account.tokens

    @property
    def scores_left(self) -> int:
        """Scorer evaluations still allowed."""
        return self.budget.max_scored - self.account.scored

    def expand(self, nodes: Sequence[Node], n: int, unique: bool = False) -> list[list[Node]]:
        """``n`` unscored children per node; children cut short by the token cap are dropped.

        ``unique`` drops repeated siblings: tree searches would pay the scorer for each copy.
        """
        if not nodes or self.tokens_left <= 0:
            return [[] for _ in nodes]
        self._round += 1
        c = self.config
        drafts = self.proposer.propose(
            self.question,
            [nd.steps for nd in nodes],
            n,
            c.temperature,
            seed=c.seed * 1_000_003 + self._round,
            max_tokens=self.tokens_left,
        )
        self.account.proposer_calls += 1
        self.account.tokens += sum(d.tokens for row in drafts for d in row)
        if self.account.tokens > self.budget.max_tokens:
            raise RuntimeError("the proposer overdrew its token cap")
        out = []
        for nd, row in zip(nodes, drafts, strict=True):
            texts = [d.text for d in row]
            keep = [d for i, d in enumerate(row) if d.complete]
            if unique:
                keep = [d for i, d in enumerate(row) if d.complete and d.text not in texts[:i]]
            out.append([self._child(nd, d) for d in keep])
        return out

    def _child(self, parent: Node, draft: StepDraft) -> Node:
        steps = (*parent.steps, draft.text)
        c = self.config
        done = draft.ended or answer_of(steps, c.answer_prefix) is not None
        done = done or len(steps) >= c.max_steps
        return Node(steps, parent.scores, done)

    def score(self, nodes: Sequence[Node]) -> list[Node] | None:
        """The nodes with all their step scores, or None when the budget cannot pay for them."""
        if not nodes:
            return []
        if len(nodes) > self.scores_left:
            return None
        out = self.scorer.score_batch([(self.question, nd.steps) for nd in nodes])
        self.account.scorer_calls += 1
        self.account.scored += len(nodes)
        self.account.steps_scored += sum(len(nd.steps) for nd in nodes)
        return [Node(nd.steps, tuple(s), nd.finished) for nd, s in zip(nodes, out, strict=True)]

    def result(self, node: Node | None, score: float | None = None) -> SearchResult:
        """Close the account and wrap the chosen node."""
        self.account.seconds = time.perf_counter() - self._start
        node = node or Node()
        value = score if score is not None else node.value(self.config.aggregation)
        text = self.config.joiner.join(node.steps)
        answer = answer_of(node.steps, self.config.answer_prefix)
        return SearchResult(answer, node.steps, text, value, node.finished, self.account)


def reject(nodes: Sequence[Node], how: str, margin: float | None) -> list[Node]:
    """Early rejection: keep the nodes within ``margin`` of the best aggregated score."""
    if margin is None or not nodes:
        return list(nodes)
    best = max(nd.value(how) for nd in nodes)
    return [nd for nd in nodes if nd.value(how) >= best - margin]


def best(nodes: Sequence[Node], how: str) -> Node | None:
    """The highest-valued node, finished ones first; ties go to the earliest."""
    if not nodes:
        return None
    return max(nodes, key=lambda nd: (nd.finished, nd.value(how)))
