"""The bundled synthetic multi-step reasoning task and its word-level tokenizer.

A problem starts from a number and applies a chain of operations modulo 100:

    question:  Q 17 + 5 * 3 - 4 ?
    solution:  17 + 5 = 22 ; 22 * 3 = 66 ; 66 - 4 = 62 ; A 62

Steps are separated by the delimiter token ``;``; the last step states the answer. The task is
generated from a seed (train and held-out sets use different seeds) and checked exactly: every
step and the final answer have a single right form, so the checker also labels steps for a PRM.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

MODULUS = 100
OPS = ("+", "-", "*")
STEP_DELIMITER = ";"
SPECIAL = ("<pad>", "<bos>", "<eos>")
SYMBOLS = ("Q", "?", "A", "+", "-", "*", "=", STEP_DELIMITER)
TRAIN_SEED = 1
HELDOUT_SEED = 2


class WordTokenizer:
    """Maps whitespace-separated words of the task to ids; an unknown word is an error."""

    def __init__(self) -> None:
        self.vocab: list[str] = [*SPECIAL, *SYMBOLS, *(str(i) for i in range(MODULUS))]
        self._ids = {w: i for i, w in enumerate(self.vocab)}
        self.pad_id = self._ids["<pad>"]
        self.bos_id = self._ids["<bos>"]
        self.eos_id = self._ids["<eos>"]

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        ids = []
        for word in text.split():
            if word not in self._ids:
                raise ValueError(f"unknown word {word!r} for the task tokenizer")
            ids.append(self._ids[word])
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        words = []
        for i in ids:
            if not 0 <= int(i) < len(self.vocab):
                raise ValueError(f"token id {i} outside the vocabulary of {len(self.vocab)}")
            if int(i) in (self.pad_id, self.bos_id, self.eos_id):
                continue
            words.append(self.vocab[int(i)])
        return " ".join(words)


def apply(op: str, a: int, b: int) -> int:
    """One operation of the task, modulo 100."""
    if op == "+":
        return (a + b) % MODULUS
    if op == "-":
        return (a - b) % MODULUS
    if op == "*":
        return (a * b) % MODULUS
    raise ValueError(f"unknown operation {op!r}")


@dataclass(frozen=True)
class Problem:
    """A start number and a chain of (operation, operand) pairs."""

    start: int
    ops: tuple[tuple[str, int], ...]

    @property
    def question(self) -> str:
        chain = " ".join(f"{op} {b}" for op, b in self.ops)
        return f"Q {self.start} {chain} ?"

    def results(self) -> list[int]:
        out, value = [], self.start
        for op, b in self.ops:
            value = apply(op, value, b)
            out.append(value)
        return out

    @property
    def answer(self) -> int:
        return self.results()[-1]

    def solution_steps(self) -> list[str]:
        steps, value = [], self.start
        for (op, b), result in zip(self.ops, self.results(), strict=True):
            steps.append(f"{value} {op} {b} = {result}")
            value = result
        steps.append(f"A {value}")
        return steps

    @property
    def solution(self) -> str:
        return f" {STEP_DELIMITER} ".join(self.solution_steps())


def generate(n: int, seed: int, min_ops: int = 3, max_ops: int = 5) -> list[Problem]:
    """``n`` problems from ``seed``; the same seed gives the same list."""
    if n < 0 or min_ops < 1 or max_ops < min_ops:
        raise ValueError("need n >= 0 and 1 <= min_ops <= max_ops")
    rng = random.Random(seed)
    problems = []
    for _ in range(n):
        k = rng.randint(min_ops, max_ops)
        ops = tuple((rng.choice(OPS), rng.randint(1, 9)) for _ in range(k))
        problems.append(Problem(rng.randrange(MODULUS), ops))
    return problems


def by_prompt_length(problems: Sequence[Problem]) -> list[list[int]]:
    """Indices of ``problems`` grouped so each group's prompts have one length (one batch each)."""
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(problems):
        groups.setdefault(len(p.ops), []).append(i)
    return list(groups.values())


def split_steps(text: str, delimiter: str = STEP_DELIMITER) -> list[str]:
    """The steps of a solution text, stripped, empty ones dropped."""
    return [s.strip() for s in text.split(delimiter) if s.strip()]


def check_steps(problem: Problem, steps: Sequence[str]) -> list[bool]:
    """Label each step: correct where it is the right next step given the steps before it.

    Step i (for i < number of operations) must read ``x op b = y`` with ``x`` the previous
    result (the start for the first step), ``op b`` the question's i-th operation and ``y`` its
    value; a step right after a wrong step is judged against the wrong step's claimed value, so
    a PRM learns to find the first error. The answer step must read ``A y`` with the true answer.
    """
    labels, value = [], problem.start
    n_ops = len(problem.ops)
    for i, step in enumerate(steps):
        words = step.split()
        if i < n_ops:
            op, b = problem.ops[i]
            ok = (
                len(words) == 5
                and words[0] == str(value)
                and words[1] == op
                and words[2] == str(b)
                and words[3] == "="
                and words[4].isdigit()
                and int(words[4]) == apply(op, value, b)
            )
            labels.append(ok)
            if len(words) == 5 and words[4].isdigit():
                value = int(words[4])
        elif i == n_ops:
            labels.append(len(words) == 2 and words[0] == "A" and words[1] == str(problem.answer))
        else:
            labels.append(False)
    return labels


def final_answer(text: str) -> int | None:
    """The number after the last ``A`` of a solution text, or None."""
    words = text.split()
    for i in range(len(words) - 2, -1, -1):
        if words[i] == "A" and words[i + 1].isdigit():
            return int(words[i + 1])
    return None


def is_correct(problem: Problem, text: str) -> bool:
    """Final-answer check of a generated solution."""
    return final_answer(text) == problem.answer
