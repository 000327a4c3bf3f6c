"""Seeded, reproducible training of the bundled MoE target (``tandem train moe``).

The loop is models.train's (same task stream, schedule and held-out evaluation) plus the
load-balancing loss, which keeps all experts in use: a router that collapses onto two experts
would leave nothing to offload.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from models import task
from models.moe.config import MoEConfig
from models.moe.model import MOE_CHECKPOINT, MoELM, save_moe
from models.train import Recipe, TrainReport, train


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
    """Train, evaluate on held-out problems as it goes, save the checkpoint, report: the dense
    loop (``models.train.train``) on the MoE, with its load-balancing loss."""
    recipe = Recipe(
        build=MoELM,
        extra_loss=lambda module: cfg.balance * module.aux_loss(),
        save=save_moe,
    )
    return train(cfg, out_dir, progress, log, recipe)


def train_cli(seed: int, out: str) -> int:
    """``tandem train moe``: train from ``seed`` into ``out``/moe-target (default: bundled)."""
    import dataclasses
    import json

    cfg = dataclasses.replace(MOE, seed=seed)
    report = train_moe(cfg, out_dir=Path(out) / cfg.name if out else None)
    print(json.dumps(dataclasses.asdict(report)))
    return 0
