"""Seeded, reproducible training of the bundled target and drafter on the synthetic task."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F
from tqdm import tqdm

from models import task
from models.torch_backend import CHECKPOINT_DIR, save_checkpoint
from models.transformer import ModelConfig, TinyLM


@dataclass(frozen=True)
class TrainConfig:
    """One training run."""

    name: str  # checkpoint name under models/checkpoints
    model: ModelConfig  # shape of the network
    steps: int  # optimizer steps at the most
    batch: int = 64  # problems per step
    lr: float = 3e-3  # peak learning rate (cosine decay after a short warm-up)
    seed: int = 0  # seeds weights and the training stream
    eval_every: int = 250  # steps between held-out evaluations
    eval_problems: int = 500  # held-out problems per evaluation
    stop_at_accuracy: float | None = None  # stop once held-out accuracy reaches this
    stop_below: float | None = None  # ... and only while it is still below this (drafter window)


_VOCAB = task.WordTokenizer().vocab_size

TARGET = TrainConfig(
    name="target",
    model=ModelConfig(vocab_size=_VOCAB, d_model=128, n_layers=3, n_heads=4, d_ff=384, max_len=64),
    steps=4000,
    stop_at_accuracy=0.985,
)
DRAFTER = TrainConfig(
    name="drafter",
    model=ModelConfig(vocab_size=_VOCAB, d_model=64, n_layers=2, n_heads=2, d_ff=128, max_len=64),
    steps=3000,
    eval_every=100,
    stop_at_accuracy=0.5,
    stop_below=0.8,
)
PRESETS = {"target": TARGET, "drafter": DRAFTER}


@dataclass
class TrainReport:
    """What a run did."""

    name: str
    steps: int
    seconds: float
    accuracy: float
    history: list[tuple[int, float]] = field(default_factory=list)


def encode_example(tok: task.WordTokenizer, p: task.Problem) -> tuple[list[int], int]:
    """Token ids of question + solution, and where the solution starts."""
    prompt = [tok.bos_id, *tok.encode(p.question)]
    return [*prompt, *tok.encode(p.solution), tok.eos_id], len(prompt)


def make_batch(
    tok: task.WordTokenizer, problems: list[task.Problem]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids [B, T] and a loss mask over solution tokens [B, T-1]."""
    rows = [encode_example(tok, p) for p in problems]
    t = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), t), tok.pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), t - 1)
    for i, (r, start) in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, start - 1 : len(r) - 1] = 1.0
    return ids, mask


@torch.inference_mode()
def greedy_solutions(module: TinyLM, problems: list[task.Problem], max_new: int = 40) -> list[str]:
    """Batched greedy decoding (problems grouped by prompt length), for evaluation."""
    tok = task.WordTokenizer()
    module.eval()
    out: dict[int, str] = {}
    for idx in task.by_prompt_length(problems):
        ids = torch.tensor([[tok.bos_id, *tok.encode(problems[i].question)] for i in idx])
        done = torch.zeros(len(idx), dtype=torch.bool)
        for _ in range(min(max_new, module.cfg.max_len - ids.shape[1])):
            nxt = module.train_logits(ids)[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, tok.eos_id), nxt)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            done |= nxt == tok.eos_id
            if bool(done.all()):
                break
        for row, i in enumerate(idx):
            out[i] = tok.decode(ids[row].tolist())
    return [out[i].split("?", 1)[-1] for i in range(len(problems))]


def accuracy(module: TinyLM, problems: list[task.Problem]) -> float:
    """Final-answer accuracy of greedy decoding."""
    texts = greedy_solutions(module, problems)
    return sum(task.is_correct(p, t) for p, t in zip(problems, texts, strict=True)) / len(problems)


@dataclass(frozen=True)
class Recipe:
    """What differs between the networks one loop trains: how to build one, an extra loss term,
    how to save it. The dense default is ``TinyLM`` with nothing added."""

    build: Callable[[Any], torch.nn.Module] = TinyLM  # the network, from ``cfg.model``
    extra_loss: Callable[[Any], torch.Tensor] | None = None  # added to the masked task loss
    save: Callable[[Any, Path], Any] = save_checkpoint  # writes the trained network


def train(
    cfg: Any,
    out_dir: Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    recipe: Recipe = Recipe(),
) -> TrainReport:
    """Train, evaluate on held-out problems as it goes, save the checkpoint, report.

    ``cfg`` is a ``TrainConfig`` or a config with the same fields (the MoE's); ``recipe`` says
    what network it trains (``models.moe.train`` passes the MoE's)."""
    torch.manual_seed(cfg.seed)
    rng = random.Random(task.TRAIN_SEED * 1_000_003 + cfg.seed)
    tok = task.WordTokenizer()
    heldout = task.generate(cfg.eval_problems, task.HELDOUT_SEED)
    module: Any = recipe.build(cfg.model)
    opt = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, cfg.steps // 50)
    stop_below = getattr(cfg, "stop_below", None)

    def lr_at(step: int) -> float:
        if step < warmup:
            return cfg.lr * (step + 1) / warmup
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (cfg.steps - warmup)))

    start, history, acc = time.perf_counter(), [], 0.0
    bar = tqdm(range(cfg.steps), desc=f"train {cfg.name}", disable=not progress)
    step = 0
    for step in bar:
        module.train()
        problems = task.generate(cfg.batch, rng.randrange(2**31))
        ids, mask = make_batch(tok, problems)
        logits = module.train_logits(ids[:, :-1])
        loss_all = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        loss = (loss_all * mask).sum() / mask.sum()
        if recipe.extra_loss is not None:
            loss = loss + recipe.extra_loss(module)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            acc = accuracy(module, heldout)
            history.append((step + 1, acc))
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{acc:.3f}")
            log(f"event=eval model={cfg.name} step={step + 1} loss={loss.item():.4f} acc={acc:.4f}")
            hit = cfg.stop_at_accuracy is not None and acc >= cfg.stop_at_accuracy
            if hit and (stop_below is None or acc < stop_below):
                break
    bar.close()
    recipe.save(module.eval(), out_dir or CHECKPOINT_DIR / cfg.name)
    return TrainReport(cfg.name, step + 1, time.perf_counter() - start, acc, history)
