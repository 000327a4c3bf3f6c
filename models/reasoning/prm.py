"""A process reward model for the bundled task: a TinyLM backbone with a scalar head per step.

Input layout: ``<bos> question step_1 ; step_2 ; ... step_k ;`` -- every step, the last one too,
is followed by the delimiter, and the head reads the hidden state at each delimiter: that is the
first position that has seen the whole step, so its sigmoid is P(step i is right | steps < i).
Reproduce the bundled checkpoint and print its held-out ROC AUC with
``python -m models.reasoning.prm train`` (``... prm eval`` only measures it).
"""

from __future__ import annotations

import argparse
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from models import task
from models.reasoning.prm_data import Example, build_examples, label, sample_solutions
from models.reasoning.prm_onnx import DELIMITER_ID, gather_probs, pad_rows
from models.torch_backend import CHECKPOINT_DIR, load_module, resolve_checkpoint
from models.transformer import ModelConfig, TinyLM

PRM_DIR = CHECKPOINT_DIR / "prm"
EVIDENCE_FEATURES = 8  # width of the per-step features pooled over earlier steps


class PRM(nn.Module):
    """TinyLM backbone plus a step head on the final hidden states.

    Step i's logit at its delimiter adds two features to the hidden state there, each because
    a three-layer backbone does not learn it on its own in minutes (measured: held-out AUC 0.95
    without them, 0.99 with them):
    - the log-probability the backbone's own tied LM head gave the step's last token (the
      result, or the stated answer): a backbone started from the target predicts it well;
    - a max-pool over the earlier steps of small non-negative "error evidence" features and of
      each earlier step's own wrongness 1 - sigmoid(logit): under the checker an answer is
      right only if no earlier step was wrong.
    """

    def __init__(self, cfg: ModelConfig, delimiter_id: int = DELIMITER_ID) -> None:
        super().__init__()
        self.cfg, self.delimiter_id = cfg, delimiter_id
        self.backbone = TinyLM(cfg)
        self.head = nn.Linear(cfg.d_model, 1)
        self.evidence = nn.Linear(cfg.d_model, EVIDENCE_FEATURES)
        self.evidence_head = nn.Linear(EVIDENCE_FEATURES + 1, 1)
        self.likelihood_head = nn.Linear(1, 1)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Step logits [B, T], one per position (only delimiter positions are meaningful).

        Right padding is safe without a padding mask: causal attention and the running max
        never let a real position see the pads after it.
        """
        m = self.backbone
        b, t = input_ids.shape
        x = m.tok(input_ids) + m.pos(torch.arange(t).expand(b, t))
        mask = torch.ones(t, t, dtype=torch.bool).tril().expand(b, t, t)
        empty = m.empty_cache(b)
        for i, block in enumerate(m.blocks):
            x, _, _ = block(x, empty[i], empty[i], mask)
        h = m.ln_f(x)  # [B, T, D]
        is_delim = (input_ids == self.delimiter_id)[..., None]  # [B, T, 1]
        logp = torch.log_softmax(h @ m.tok.weight.T, dim=-1)  # [B, T, V] next-token log-probs
        # log p(token t | tokens < t), placed one further on: at a delimiter it is the step's
        # last token, [B, T, 1]
        seen = logp[:, :-1].gather(-1, input_ids[:, 1:, None])
        last = F.pad(seen, (0, 0, 2, 0))[:, :t]
        own = self.head(h) + self.likelihood_head(last)  # [B, T, 1] the step on its own
        # evidence: learned features plus how wrong the step itself looks, bounded in [0, 1]
        ev = torch.cat([torch.relu(self.evidence(h)), 1 - torch.sigmoid(own)], -1) * is_delim
        # running max over positions <= t, [B, T, E + 1]; as a masked max rather than cummax,
        # which ONNX has no operator for (exact: ev >= 0, so masked zeros never win)
        seen_by = torch.ones(t, t, dtype=ev.dtype).tril()[None, :, :, None]  # [1, T, S, 1]
        pooled = (ev[:, None] * seen_by).amax(dim=2)
        before = F.pad(pooled, (0, 0, 1, 0))[:, :-1]  # strictly earlier positions
        out = own + self.evidence_head(before)
        return out[..., 0]


def pad_batch(
    tok: task.WordTokenizer, rows: Sequence[tuple[str, Sequence[str]]], max_len: int
) -> tuple[torch.Tensor, list[list[int]]]:
    """Right-padded ids [B, T] and each row's scoring positions (``prm_onnx.pad_rows``)."""
    ids, where = pad_rows(tok, rows, max_len)
    return torch.from_numpy(ids), where


@torch.inference_mode()
def step_probs(
    prm: PRM, rows: Sequence[tuple[str, Sequence[str]]], chunk: int = 256
) -> list[list[float]]:
    """P(correct) of every step of every row; one forward pass per ``chunk`` rows."""
    tok, out = task.WordTokenizer(), []
    prm.eval()
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        ids, where = pad_batch(tok, part, prm.cfg.max_len)
        out += gather_probs(torch.sigmoid(prm(ids)).numpy(), where, part)
    return out


def export_prm_onnx(prm: PRM, directory: Path) -> Path:
    """Write ``directory``/model.onnx (fp32, batch and length dynamic) and check it against torch.

    fp32 rather than int8: the scores are the product here, and at one row per call the time
    goes to operator overhead, not to the matrix products int8 would shrink.
    """
    import warnings

    from models.reasoning.prm_onnx import ONNX_FILE, OnnxPRM

    path = Path(directory) / ONNX_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    prm.cfg.save(path.parent / "config.json")
    prm = prm.eval()
    example = torch.randint(0, prm.cfg.vocab_size, (2, 7))  # sizes > 1: nothing specialized
    dim = torch.export.Dim
    dynamic = {"input_ids": {0: dim("batch"), 1: dim("length", max=prm.cfg.max_len)}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter is chatty about axis renames
        torch.onnx.export(
            prm,
            (example,),
            str(path),
            input_names=["input_ids"],
            output_names=["step_logits"],
            dynamic_shapes=dynamic,
            external_data=False,
            dynamo=True,
            verbose=False,
        )
    rows = [(p.question, p.solution_steps()) for p in task.generate(8, task.HELDOUT_SEED)]
    rows += [(q, s[:1]) for q, s in rows]  # rows of different lengths: padding exercised
    want, got = step_probs(prm, rows), OnnxPRM(path).step_probs(rows)
    if not np.allclose(np.concatenate(want), np.concatenate(got), atol=1e-5):
        raise RuntimeError(f"exported {path} disagrees with the torch PRM")
    return path


def roc_auc(labels: Sequence[bool], scores: Sequence[float]) -> float:
    """Area under the ROC curve by ranks (Mann-Whitney U); ties get their average rank."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC AUC needs both positive and negative labels")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):  # walk runs of equal scores, giving each run its mean 1-based rank
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@dataclass(frozen=True)
class PRMTrainConfig:
    """One PRM training run."""

    model: ModelConfig  # backbone shape (must match init_from's when that is set)
    init_from: str | None = "target"  # start the backbone from this LM checkpoint (None: random)
    drafter: str = "drafter"  # checkpoint whose samples supply realistic mistakes
    temperature: float = 1.0  # drafter sampling temperature for training data
    problems: int = 20_000  # training problems (each gives a drafter sample, some get more)
    epochs: int = 3  # passes over the training examples
    batch: int = 64  # examples per optimizer step
    lr: float = 1e-3  # peak learning rate (cosine decay after a short warm-up)
    seed: int = 0  # seeds the data, the head's init and the batch order
    eval_problems: int = 1000  # held-out problems (HELDOUT_SEED) for the reported AUC
    threads: int = 1  # torch threads; one leaves a core for the rest of the machine


DEFAULT = PRMTrainConfig(
    model=ModelConfig(task.WordTokenizer().vocab_size, 128, 3, 4, 384, 64),
)


def heldout_examples(
    drafter: TinyLM, n: int, seed: int = 0, temperature: float = 1.0
) -> list[Example]:
    """Drafter samples on the first ``n`` held-out problems, labelled by the checker."""
    problems = task.generate(n, task.HELDOUT_SEED)
    texts = sample_solutions(drafter, problems, temperature, seed)
    examples = [label(p, task.split_steps(t)) for p, t in zip(problems, texts, strict=True)]
    return [e for e in examples if e.steps]


def evaluate_auc(prm: PRM, examples: Sequence[Example]) -> float:
    """Step-level ROC AUC of the PRM against the checker's labels."""
    scores = step_probs(prm, [(e.question, e.steps) for e in examples])
    labels = [lab for e in examples for lab in e.labels]
    return roc_auc(labels, [s for row in scores for s in row])


def train_prm(
    cfg: PRMTrainConfig = DEFAULT, out_dir: Path | None = PRM_DIR, progress: bool = True
) -> tuple[PRM, float]:
    """Train with BCE on step labels, save (unless ``out_dir`` is None), return it and its AUC."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    drafter = load_module(cfg.drafter)
    held = {p.question for p in task.generate(cfg.eval_problems, task.HELDOUT_SEED)}
    problems = [p for p in task.generate(cfg.problems, 1000 + cfg.seed) if p.question not in held]
    examples = build_examples(drafter, problems, cfg.temperature, cfg.seed)
    prm = PRM(cfg.model)
    if cfg.init_from is not None:
        prm.backbone.load_state_dict(load_module(cfg.init_from).state_dict())
    tok = task.WordTokenizer()
    opt = torch.optim.AdamW(prm.parameters(), lr=cfg.lr, weight_decay=0.01)
    total = cfg.epochs * math.ceil(len(examples) / cfg.batch)
    warmup = max(1, total // 20)
    bar = tqdm(total=total, desc="train prm", disable=not progress)
    step, start = 0, time.perf_counter()
    for _ in range(cfg.epochs):
        rng.shuffle(examples)
        prm.train()
        for i in range(0, len(examples), cfg.batch):
            part = examples[i : i + cfg.batch]
            ids, where = pad_batch(tok, [(e.question, e.steps) for e in part], cfg.model.max_len)
            rows = torch.tensor([r for r, w in enumerate(where) for _ in w])
            cols = torch.tensor([c for w in where for c in w])
            labels = [e.labels[: len(w)] for e, w in zip(part, where, strict=True)]
            target = torch.tensor([float(lab) for row in labels for lab in row])
            loss = F.binary_cross_entropy_with_logits(prm(ids)[rows, cols], target)
            decay = 0.5 * (1 + math.cos(math.pi * max(0, step - warmup) / (total - warmup)))
            for g in opt.param_groups:
                g["lr"] = cfg.lr * min(1.0, (step + 1) / warmup) * decay
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(prm.parameters(), 1.0)
            opt.step()
            step += 1
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    auc = evaluate_auc(prm, heldout_examples(drafter, cfg.eval_problems, seed=cfg.seed))
    if progress:
        print(f"event=prm_trained seconds={time.perf_counter() - start:.0f} heldout_auc={auc:.4f}")
    if out_dir is not None:
        save_prm(prm, out_dir)
    return prm.eval(), auc


def save_prm(prm: PRM, directory: Path) -> None:
    """config.json, model.safetensors and its ONNX graph model.onnx (fp32) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    prm.cfg.save(directory / "config.json")
    state = {k: v.detach().contiguous() for k, v in prm.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"))
    export_prm_onnx(prm, directory)


def load_prm(name_or_path: str | Path = PRM_DIR) -> PRM:
    """A saved PRM (bundled name ``prm`` or a directory), in eval mode."""
    d = resolve_checkpoint(name_or_path)
    prm = PRM(ModelConfig.load(d / "config.json"))
    prm.load_state_dict(load_file(str(d / "model.safetensors")))
    return prm.eval()


def main(argv: Sequence[str] | None = None) -> None:
    """``train``: reproduce the bundled PRM; ``eval``: print its held-out step AUC."""
    ap = argparse.ArgumentParser(prog="python -m models.reasoning.prm")
    ap.add_argument("command", choices=["train", "eval"])
    ap.add_argument("--problems", type=int, default=DEFAULT.eval_problems, help="held-out count")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.command == "train":
        train_prm()
        return
    examples = heldout_examples(load_module(DEFAULT.drafter), args.problems)
    n_steps = sum(len(e.labels) for e in examples)
    auc = evaluate_auc(load_prm(), examples)
    print(f"held-out problems={len(examples)} steps={n_steps} step ROC AUC={auc:.4f}")


if __name__ == "__main__":
    main()
