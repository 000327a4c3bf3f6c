"""The synthetic task, the transformer's cache, and the bundled checkpoints' quality."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from models import task
from models.torch_backend import load_module, load_torch
from models.train import TrainConfig, accuracy, train
from models.transformer import ModelConfig


def test_generation_is_seeded_and_splits_differ() -> None:
    assert task.generate(50, 3) == task.generate(50, 3)
    train_q = {p.question for p in task.generate(500, task.TRAIN_SEED)}
    held_q = {p.question for p in task.generate(500, task.HELDOUT_SEED)}
    assert len(train_q & held_q) < 5


def test_checker_labels_each_step_and_the_answer() -> None:
    p = task.Problem(17, (("+", 5), ("*", 3), ("-", 4)))
    assert p.solution == "17 + 5 = 22 ; 22 * 3 = 66 ; 66 - 4 = 62 ; A 62"
    assert task.check_steps(p, p.solution_steps()) == [True] * 4
    wrong = ["17 + 5 = 23", "23 * 3 = 69", "69 - 4 = 65", "A 65"]
    # the first error is caught; later steps are judged against the wrong value they built on
    assert task.check_steps(p, wrong) == [False, True, True, False]
    assert task.is_correct(p, p.solution) and not task.is_correct(p, " ; ".join(wrong))
    assert task.final_answer("no answer here") is None


def test_tokenizer_round_trip_and_errors(tok) -> None:
    p = task.generate(1, 5)[0]
    assert tok.decode(tok.encode(p.solution)) == p.solution
    with pytest.raises(ValueError, match="unknown word 'dog'"):
        tok.encode("Q 1 + dog")
    with pytest.raises(ValueError, match="token id 500"):
        tok.decode([500])


def test_incremental_and_batched_extension_match_one_full_pass(target_lm) -> None:
    seq = [1, 3, 20, 6, 13, 8, 14, 4, 20, 6, 13]
    full = target_lm.module.train_logits(torch.tensor([seq]))[0].detach().numpy()
    s = target_lm.session()
    parts = [s.extend(seq[:4]), s.extend(seq[4:5]), s.extend(seq[5:])]
    assert np.allclose(np.concatenate(parts), full, atol=1e-4)
    s.truncate(6)  # roll back, then feed a different continuation
    assert np.allclose(s.extend(seq[6:]), full[6:], atol=1e-4)
    a, b = target_lm.session(), target_lm.session()
    a.extend(seq[:3])
    b.extend(seq[:7])
    out = target_lm.extend_batch([a, b], [seq[3:9], seq[7:8]])
    assert np.allclose(out[0], full[3:9], atol=1e-4)
    assert np.allclose(out[1], full[7:8], atol=1e-4)
    assert (a.length, b.length) == (9, 8)
    with pytest.raises(ValueError, match="cannot truncate"):
        a.truncate(10)
    with pytest.raises(ValueError, match="token id"):
        a.extend([10_000])


def test_bundled_checkpoints_meet_their_accuracy_windows() -> None:
    heldout = task.generate(500, task.HELDOUT_SEED)
    assert accuracy(load_module("target"), heldout) >= 0.95
    assert 0.30 <= accuracy(load_module("drafter"), heldout) <= 0.80
    assert load_torch("target").vocab_size == task.WordTokenizer().vocab_size


def test_training_is_reproducible_from_its_seed(tmp_path) -> None:
    cfg = TrainConfig(
        name="tiny",
        model=ModelConfig(task.WordTokenizer().vocab_size, 16, 1, 2, 32, 64),
        steps=6,
        batch=8,
        eval_every=6,
        eval_problems=20,
    )
    r1 = train(cfg, tmp_path / "a", progress=False, log=lambda _: None)
    r2 = train(cfg, tmp_path / "b", progress=False, log=lambda _: None)
    r3 = train(dataclasses.replace(cfg, seed=1), tmp_path / "c", progress=False, log=lambda _: None)
    wa, wb, wc = (load_module(tmp_path / n).state_dict() for n in "abc")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
    assert r1.steps == r2.steps == r3.steps == 6
