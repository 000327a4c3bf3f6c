"""The registry of step-level search strategies, all with one signature.

    strategy(question, proposer, scorer, budget, config) -> SearchResult

``proposer`` drafts candidate next steps (edge drafters), ``scorer`` judges steps (cloud PRM),
``budget`` bounds drafted tokens and scorer evaluations, ``config`` holds N, M, aggregation,
temperature, early-rejection margin and seed. Strategies are pure code over the two protocols,
so the same strategy runs wherever its controller runs.
"""

from __future__ import annotations

from models.reasoning.proposer import LMProposerConfig, LMStepProposer, StepDraft, StepProposer
from models.reasoning.search_core import (
    Account,
    Budget,
    SearchConfig,
    SearchResult,
    Strategy,
    aggregate,
    answer_of,
)
from models.reasoning.search_sampling import (
    beam_search,
    best_of_n,
    best_of_n_weighted,
    dvts,
    greedy,
    majority_vote,
)
from models.reasoning.search_tree import a_star, particle_filter

STRATEGIES: dict[str, Strategy] = {
    "greedy": greedy,  # baseline: the proposer's greedy solution, no scorer
    "best_of_n": best_of_n,  # naive: highest aggregated score
    "best_of_n_weighted": best_of_n_weighted,  # answer with the largest summed score
    "majority_vote": majority_vote,  # most frequent answer, no scorer
    "beam": beam_search,  # top N/M beams, M expansions each
    "dvts": dvts,  # N/M independent subtrees
    "a_star": a_star,  # best-first over a priority queue of partial solutions
    "particle_filter": particle_filter,  # resampling with entropic annealing
}

__all__ = [
    "STRATEGIES",
    "Account",
    "Budget",
    "LMProposerConfig",
    "LMStepProposer",
    "SearchConfig",
    "SearchResult",
    "StepDraft",
    "StepProposer",
    "Strategy",
    "aggregate",
    "answer_of",
]
