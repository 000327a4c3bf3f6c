"""The scorer protocol, apart from the scorers: search code imports it without torch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

Item = tuple[str, Sequence[str]]  # (question, steps) of one partial solution


@runtime_checkable
class StepScorer(Protocol):
    """Scores in [0, 1], one per step; score i judges step i given steps 0..i-1."""

    def score(self, question: str, steps: Sequence[str]) -> list[float]:
        """The scores of one partial solution."""
        ...

    def score_batch(self, items: Sequence[Item]) -> list[list[float]]:
        """The scores of several partial solutions (of any requests), batched where possible."""
        ...
