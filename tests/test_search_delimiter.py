"""Generic search code follows the request's step delimiter and answer prefix."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from models.reasoning.proposer import StepDraft
from models.reasoning.search_core import Budget, SearchConfig
from models.reasoning.strategies import STRATEGIES

SOLUTION = ("3 + 4 = 7", "7 * 2 = 14", "Answer: 14")


class ScriptedProposer:
    """Writes one fixed solution step by step: the search's plumbing, not a model, is tested."""

    def propose(
        self,
        question: str,
        prefixes: Sequence[Sequence[str]],
        n: int,
        temperature: float,
        seed: int,
        max_tokens: int | None = None,
    ) -> list[list[StepDraft]]:
        out = []
        for prefix in prefixes:
            step = SOLUTION[min(len(prefix), len(SOLUTION) - 1)]
            out.append([StepDraft(step, 5, True, False) for _ in range(n)])
        return out


class FlatScorer:
    def score(self, question: str, steps: Sequence[str]) -> list[float]:
        return [1.0] * len(steps)

    def score_batch(self, items: Sequence[tuple[str, Sequence[str]]]) -> list[list[float]]:
        return [self.score(q, s) for q, s in items]


@pytest.mark.parametrize(
    "name", ["greedy", "best_of_n", "best_of_n_weighted", "beam", "majority_vote"]
)
def test_search_joins_with_the_delimiter_and_reads_the_answer_prefix(name: str) -> None:
    config = SearchConfig(n=2, m=2, delimiter="\n", answer_prefix="Answer:")
    result = STRATEGIES[name]("Q", ScriptedProposer(), FlatScorer(), Budget(), config)
    assert result.steps == SOLUTION
    assert result.text == "\n".join(SOLUTION)  # never " ; "
    assert result.answer == "14"
    assert result.finished
