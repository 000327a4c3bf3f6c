"""Every registered strategy on held-out problems: accuracy and work, one table.

``python -m models.reasoning.compare --problems 50 --scorer prm`` (or ``oracle``, ``judge``).
The drafter proposes steps; ``greedy`` is the drafter alone, the baseline to beat.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from models import task
from models.reasoning.scorers import JudgeScorer, OracleScorer, PRMScorer, StepScorer
from models.reasoning.strategies import STRATEGIES, Budget, LMStepProposer, SearchConfig
from models.torch_backend import load_torch


@dataclass(frozen=True)
class Row:
    """One strategy's totals over a problem set."""

    strategy: str  # registry name
    accuracy: float  # share of problems answered right
    finished: float  # share of results that are finished solutions
    tokens: float  # drafted tokens per problem
    scored: float  # scorer evaluations (one sequence each) per problem
    scorer_calls: float  # batched scorer calls (round trips) per problem
    seconds: float  # wall time per problem


def compare(
    problems: Sequence[task.Problem],
    scorer: StepScorer,
    config: SearchConfig,
    budget: Budget,
    names: Sequence[str] | None = None,
) -> list[Row]:
    """Run each strategy on each problem (seed = problem index) with the bundled drafter."""
    proposer = LMStepProposer(load_torch("drafter"), task.WordTokenizer())
    rows = []
    for name in names or list(STRATEGIES):
        acc = fin = tokens = scored = calls = 0.0
        start = time.perf_counter()
        for i, p in enumerate(problems):
            cfg = replace(config, seed=config.seed + i)
            r = STRATEGIES[name](p.question, proposer, scorer, budget, cfg)
            acc += r.answer == str(p.answer)
            fin += r.finished
            tokens += r.account.tokens
            scored += r.account.scored
            calls += r.account.scorer_calls
        n = len(problems)
        secs = (time.perf_counter() - start) / n
        rows.append(Row(name, acc / n, fin / n, tokens / n, scored / n, calls / n, secs))
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    """Print the comparison table."""
    ap = argparse.ArgumentParser(prog="python -m models.reasoning.compare")
    ap.add_argument("--problems", type=int, default=50, help="held-out problems")
    ap.add_argument("--scorer", choices=["prm", "oracle", "judge"], default="prm")
    ap.add_argument("--n", type=int, default=8, help="samples / beam width / particles")
    ap.add_argument("--m", type=int, default=4, help="expansions per node")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--aggregation", choices=["last", "min", "product"], default="min")
    ap.add_argument("--min-ops", type=int, default=3)
    ap.add_argument("--max-ops", type=int, default=5)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    tok = task.WordTokenizer()
    scorers = {
        "prm": PRMScorer,
        "oracle": OracleScorer,
        "judge": lambda: JudgeScorer(load_torch("target"), tok),
    }
    problems = task.generate(args.problems, task.HELDOUT_SEED, args.min_ops, args.max_ops)
    config = SearchConfig(
        n=args.n, m=args.m, temperature=args.temperature, aggregation=args.aggregation
    )
    rows = compare(problems, scorers[args.scorer](), config, Budget())
    print(f"scorer={args.scorer} problems={len(problems)} n={args.n} m={args.m}")
    head = ("acc", "fin", "tokens", "scored", "calls", "s/prob")
    print(f"{'strategy':20s} " + " ".join(f"{h:>7s}" for h in head))
    for r in rows:
        print(
            f"{r.strategy:20s} {r.accuracy:7.2f} {r.finished:7.2f} {r.tokens:7.0f} "
            f"{r.scored:7.1f} {r.scorer_calls:7.1f} {r.seconds:7.3f}"
        )


if __name__ == "__main__":
    main()
