"""Step scorers: the one protocol the cloud serves for PRM search and step speculation.

A scorer judges every step of a partial solution given the steps before it, so a search can
aggregate a solution's step scores (last, min, product) and prune or resample on them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from models import task
from models.base import CausalLM, Tokenizer
from models.onnx_backend import model_dir
from models.reasoning.prm_onnx import ONNX_FILE, OnnxPRM
from models.reasoning.protocols import Item, StepScorer

if TYPE_CHECKING:  # the torch PRM is imported only when it is used
    from models.reasoning.prm import PRM

__all__ = ["Item", "JudgeScorer", "OracleScorer", "PRMScorer", "StepScorer", "parse_question"]


class PRMScorer:
    """The trained PRM; a whole batch of items is one forward pass.

    ``backend``: ``onnx`` runs the exported graph (``tandem export-onnx prm``) on ONNX Runtime,
    ``torch`` the checkpoint itself, ``auto`` (the default) the graph when it is there. Both give
    the same scores to within 1e-5; ONNX is faster at the small batches step speculation sends.
    """

    def __init__(
        self, prm: PRM | None = None, path: str | Path | None = None, backend: str = "auto"
    ) -> None:
        if backend not in ("auto", "onnx", "torch"):
            raise ValueError(f"PRM backend {backend!r}: use auto, onnx or torch")
        where = model_dir(path or "prm")
        if (
            prm is None
            and backend != "torch"
            and (backend == "onnx" or (where / ONNX_FILE).is_file())
        ):
            self.backend = "onnx"
            self._probs = OnnxPRM.load(where).step_probs
            return
        from models.reasoning.prm import load_prm, step_probs  # torch

        model = prm if prm is not None else load_prm(where)
        self.backend = "torch"
        self._probs = partial(step_probs, model)

    def score(self, question: str, steps: Sequence[str]) -> list[float]:
        return self.score_batch([(question, steps)])[0]

    def score_batch(self, items: Sequence[Item]) -> list[list[float]]:
        # chunk as large as any sane batch: the caller asked for one pass
        return self._probs(items, chunk=max(1, len(items)))


def parse_question(question: str) -> task.Problem:
    """The task problem a question text states (``Q 17 + 5 * 3 ?``); ValueError if malformed."""
    words = question.split()
    ok = len(words) >= 5 and words[0] == "Q" and words[-1] == "?" and len(words) % 2 == 1
    if not ok or not all(w.isdigit() for w in words[1:-1:2]):
        raise ValueError(f"not a question of the bundled task: {question!r}")
    ops = tuple((words[i], int(words[i + 1])) for i in range(2, len(words) - 1, 2))
    if any(op not in task.OPS for op, _ in ops):
        raise ValueError(f"unknown operation in {question!r}")
    return task.Problem(int(words[1]), ops)


class OracleScorer:
    """The task's exact checker as a scorer: 1.0 for a right step, 0.0 otherwise.

    An upper bound for benchmarks and a noise-free scorer for tests; knows only the bundled task.
    """

    def score(self, question: str, steps: Sequence[str]) -> list[float]:
        return [float(ok) for ok in task.check_steps(parse_question(question), steps)]

    def score_batch(self, items: Sequence[Item]) -> list[list[float]]:
        return [self.score(q, s) for q, s in items]


# Works with the bundled word tokenizer: every word of the filled template is in its vocabulary.
TASK_TEMPLATE = "{question} {steps} ;"
# SpecReason's judge prompt, for models with a natural-language tokenizer.
SPECREASON_TEMPLATE = (
    "Question: {question}\nPrevious steps:\n{previous}\nLast step:\n{last}\n"
    "Evaluate the last reasoning step solely based on factual correctness and logical validity. "
    "Answer with a single digit from 0 (wrong) to 9 (certainly right).\nScore:"
)


@dataclass(frozen=True)
class JudgeConfig:
    """How a language model is asked to score the last step of a partial solution."""

    template: str = TASK_TEMPLATE  # fields: {question}, {steps}, {previous}, {last}
    expected: bool = True  # expectation over the digit probabilities; False: the greedy digit
    step_joiner: str = " ; "  # joins steps for {steps} and {previous}
    prepend_bos: bool = True  # feed the tokenizer's bos id before the prompt


class JudgeScorer:
    """A CausalLM asked for a one-token 0-9 score of a step, normalised to [0, 1].

    Only the digit tokens' logits after the prompt are read: either the argmax digit (greedy) or
    sum_d d * p(d) under the distribution renormalised over the ten digits (expected value).
    ``score`` judges each step with its own prompt (prefix up to that step), all in one batch.
    """

    def __init__(
        self, lm: CausalLM, tokenizer: Tokenizer, config: JudgeConfig | None = None
    ) -> None:
        self.lm, self.tok = lm, tokenizer
        self.config = config or JudgeConfig()
        self.digit_ids = self._digit_ids()

    def _digit_ids(self) -> list[int]:
        ids = []
        for d in range(10):
            try:
                enc = self.tok.encode(str(d))
            except ValueError as e:
                raise ValueError(f"judge tokenizer cannot encode the digit {d}: {e}") from e
            if len(enc) != 1:
                raise ValueError(
                    f"judge needs each digit 0-9 as a single token; {d!r} encodes to {enc}"
                )
            ids.append(enc[0])
        return ids

    def prompt(self, question: str, steps: Sequence[str]) -> list[int]:
        """Token ids that ask for the score of the last of ``steps``."""
        c = self.config
        text = c.template.format(
            question=question,
            steps=c.step_joiner.join(steps),
            previous=c.step_joiner.join(steps[:-1]),
            last=steps[-1] if steps else "",
        )
        ids = self.tok.encode(text)
        return [self.tok.bos_id, *ids] if c.prepend_bos else ids

    def judge_last(self, items: Sequence[Item]) -> list[float]:
        """The score of the last step of each item, in one batched pass."""
        prompts = [self.prompt(q, s) for q, s in items]
        for p in prompts:
            if len(p) > self.lm.max_len:
                raise ValueError(
                    f"judge prompt of {len(p)} tokens exceeds max_len {self.lm.max_len}"
                )
        if not prompts:
            return []
        sessions = [self.lm.session() for _ in prompts]
        rows = np.stack([lg[-1] for lg in self.lm.extend_batch(sessions, prompts)])
        digits = rows[:, self.digit_ids].astype(np.float64)  # [B, 10]
        if not self.config.expected:
            return (digits.argmax(-1) / 9.0).tolist()
        p = np.exp(digits - digits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        return (p @ np.arange(10) / 9.0).tolist()

    def score(self, question: str, steps: Sequence[str]) -> list[float]:
        return self.score_batch([(question, steps)])[0]

    def score_batch(self, items: Sequence[Item]) -> list[list[float]]:
        prefixes = [(q, list(s[: i + 1])) for q, s in items for i in range(len(s))]
        flat = iter(self.judge_last(prefixes))
        return [[next(flat) for _ in s] for _, s in items]
