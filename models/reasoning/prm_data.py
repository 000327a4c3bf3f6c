"""Labelled step data for the PRM: drafter samples, true solutions and synthetic corruptions.

Every example is a (problem, steps) pair labelled step by step with ``task.check_steps``, the
task's exact checker, so the PRM learns "is this step the right next step given the ones before".
Drafter samples at temperature ~1 give realistic mistakes; true solutions and corruptions (one
wrong result number) make sure both classes appear at every step position.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from models import task
from models.transformer import TinyLM, causal_mask


@dataclass(frozen=True)
class Example:
    """One solution attempt and the checker's label for each of its steps."""

    question: str  # the problem's question text
    steps: tuple[str, ...]  # the attempt's steps, without delimiters
    labels: tuple[bool, ...]  # check_steps of those steps


def label(problem: task.Problem, steps: list[str]) -> Example:
    """An attempt at ``problem`` with the checker's step labels."""
    return Example(problem.question, tuple(steps), tuple(task.check_steps(problem, steps)))


@torch.inference_mode()
def sample_solutions(
    module: TinyLM, problems: list[task.Problem], temperature: float, seed: int, max_new: int = 48
) -> list[str]:
    """One sampled solution text per problem, batched by prompt length, through the KV cache."""
    tok = task.WordTokenizer()
    gen = torch.Generator().manual_seed(seed)
    module.eval()
    out: dict[int, str] = {}
    for idx in task.by_prompt_length(problems):
        ids = torch.tensor([[tok.bos_id, *tok.encode(problems[i].question)] for i in idx])
        b, past = ids.shape
        empty = module.empty_cache(b)
        pos = torch.arange(past).expand(b, past)
        logits, keys, values = module(
            ids, pos, empty, empty, causal_mask(0, past).expand(b, -1, -1)
        )
        done = torch.zeros(b, dtype=torch.bool)
        new: list[torch.Tensor] = []
        for _ in range(min(max_new, module.cfg.max_len - past)):
            p = torch.softmax(logits[:, -1] / temperature, dim=-1)
            nxt = torch.multinomial(p, 1, generator=gen)[:, 0]
            nxt = torch.where(done, torch.full_like(nxt, tok.eos_id), nxt)
            new.append(nxt)
            done |= nxt == tok.eos_id
            if bool(done.all()) or past + 1 > module.cfg.max_len - 1:
                break
            mask = causal_mask(past, 1).expand(b, -1, -1)
            step_pos = torch.full((b, 1), past)
            logits, keys, values = module(nxt[:, None], step_pos, keys, values, mask)
            past += 1
        rows = torch.stack(new, dim=1).tolist() if new else [[] for _ in idx]
        for row, i in zip(rows, idx, strict=True):
            cut = row.index(tok.eos_id) if tok.eos_id in row else len(row)
            out[i] = tok.decode(row[:cut])
    return [out[i] for i in range(len(problems))]


def corrupt(problem: task.Problem, rng: random.Random, step: int | None = None) -> list[str]:
    """The true solution with one wrong result number in step ``step`` (default: random).

    Half of the time the chain then continues correctly from the wrong value (the drafter's usual
    mistake: one bad product, then sound steps), otherwise the true later steps are kept, which
    the checker rejects at the next step because it no longer starts from the claimed value.
    """
    steps = problem.solution_steps()
    i = rng.randrange(len(steps)) if step is None else step
    if i == len(problem.ops):  # the answer step: state a wrong answer
        wrong = (problem.answer + rng.randint(1, 99)) % task.MODULUS
        return [*steps[:-1], f"A {wrong}"]
    value = problem.start if i == 0 else problem.results()[i - 1]
    op, b = problem.ops[i]
    wrong = (task.apply(op, value, b) + rng.randint(1, 99)) % task.MODULUS
    steps[i] = f"{value} {op} {b} = {wrong}"
    if rng.random() < 0.5:
        for j in range(i + 1, len(problem.ops)):
            op, b = problem.ops[j]
            steps[j] = f"{wrong} {op} {b} = {task.apply(op, wrong, b)}"
            wrong = task.apply(op, wrong, b)
        steps[-1] = f"A {wrong}"
    return steps


def build_examples(
    module: TinyLM,
    problems: list[task.Problem],
    temperature: float,
    seed: int,
    true_fraction: float = 0.15,
    corrupt_fraction: float = 0.35,
    answer_fraction: float = 0.25,
) -> list[Example]:
    """Drafter samples for every problem, plus true and corrupted solutions for a share of them.

    Answer-only corruptions get their own share: drafter samples nearly always restate their
    last result, so without them the PRM never learns that the answer must match it.
    """
    rng = random.Random(seed)
    texts = sample_solutions(module, problems, temperature, seed)
    examples = [label(p, task.split_steps(t)) for p, t in zip(problems, texts, strict=True)]
    for p in problems:
        if rng.random() < true_fraction:
            examples.append(label(p, p.solution_steps()))
        if rng.random() < corrupt_fraction:
            examples.append(label(p, corrupt(p, rng)))
        if rng.random() < answer_fraction:
            examples.append(label(p, corrupt(p, rng, step=len(p.ops))))
    return [e for e in examples if e.steps]
