"""Seeded, reproducible training of the bundled MoE target (``tandem train moe``).

The loop is models.train's (same task stream, schedule and held-out evaluation) plus the
load-balancing loss, which keeps all experts in use: a router that collapses onto two experts
would leave nothing to offload.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional as F
from tqdm import tqdm

from models import task
from models.moe.config import MoEConfig
from models.moe.model import MOE_CHECKPOINT, MoELM, save_moe
from models.torch_backend import CHECKPOINT_DIR
from models.train import TrainReport, accuracy, make_batch


@dataclass(frozen=True)
class MoETrainConfig:
    """One MoE training run."""

    name: str  # checkpoint name under models/checkpoints
    model: MoEConfig  # shape of the network
    steps: int  # optimizer steps at the most
    batch: int = 64  # problems per step
    lr: float = 3e-3  # peak learning rate (cosine decay after a short warm-up)
    balance: float = 0.01  # weight of the load-balancing loss
    seed: int = 0  # seeds weights and the training stream
    eval_every: int = 250  # steps between held-out evaluations
    eval_problems: int = 500  # held-out problems per evaluation
    stop_at_accuracy: float | None = None  # stop once held-out accuracy reaches this


MOE = MoETrainConfig(
    name=MOE_CHECKPOINT,
    model=MoEConfig(vocab_size=task.WordTokenizer().vocab_size),
    steps=4000,
    stop_at_accuracy=0.985,
)


def train_moe(
    cfg: MoETrainConfig = MOE,
    out_dir: Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> TrainReport:
    """Train, evaluate on held-out problems as it goes, save the checkpoint, report."""
    torch.manual_seed(cfg.seed)
    rng = random.Random(task.TRAIN_SEED * 1_000_003 + cfg.seed)
    tok = task.WordTokenizer()
    heldout = task.generate(cfg.eval_problems, task.HELDOUT_SEED)
    module = MoELM(cfg.model)
    opt = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, cfg.steps // 50)

    def lr_at(step: int) -> float:
        if step < warmup:
            return cfg.lr * (step + 1) / warmup
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (cfg.steps - warmup)))

    start, history, acc, step = time.perf_counter(), [], 0.0, 0
    bar = tqdm(range(cfg.steps), desc=f"train {cfg.name}", disable=not progress)
    for step in bar:
        module.train()
        ids, mask = make_batch(tok, task.generate(cfg.batch, rng.randrange(2**31)))
        logits = module.train_logits(ids[:, :-1])
        ce = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        loss = (ce * mask).sum() / mask.sum() + cfg.balance * module.aux_loss()
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            acc = accuracy(module, heldout)  # type: ignore[arg-type]
            history.append((step + 1, acc))
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{acc:.3f}")
            log(f"event=eval model={cfg.name} step={step + 1} loss={loss.item():.4f} acc={acc:.4f}")
            if cfg.stop_at_accuracy is not None and acc >= cfg.stop_at_accuracy:
                break
    bar.close()
    save_moe(module.eval(), out_dir or CHECKPOINT_DIR / cfg.name)
    return TrainReport(cfg.name, step + 1, time.perf_counter() - start, acc, history)


def train_cli(seed: int, out: str) -> int:
    """``tandem train moe``: train from ``seed`` into ``out``/moe-target (default: bundled)."""
    import dataclasses
    import json

    cfg = dataclasses.replace(MOE, seed=seed)
    report = train_moe(cfg, out_dir=Path(out) / cfg.name if out else None)
    print(json.dumps(dataclasses.asdict(report)))
    return 0
