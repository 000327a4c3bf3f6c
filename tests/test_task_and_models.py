"""The synthetic task, the transformer's cache, and the bundled checkpoints' quality."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from models import task
from models.generate import Stop, StopRule, argmax, decode, decode_batch, generate
from models.sampling import SamplingParams
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


def test_the_decode_loop_stops_at_stop_ids_token_caps_and_the_length_limit() -> None:
    lm, tok = load_torch("drafter"), task.WordTokenizer()
    prompt = [tok.bos_id, *tok.encode(task.generate(1, task.HELDOUT_SEED)[0].question)]
    free = generate(lm, prompt, SamplingParams(), 60, None)
    delim = tok.encode(task.STEP_DELIMITER)[0]
    assert delim in free
    to_delim = generate(lm, prompt, SamplingParams(), 60, None, stop_ids=[delim])
    assert to_delim == free[: free.index(delim) + 1]
    assert generate(lm, prompt, SamplingParams(), 3, None) == free[:3]
    # the sequence never grows past max_len, and a full prompt gets nothing
    assert len(free) == lm.max_len - len(prompt)
    assert generate(lm, [tok.bos_id] * lm.max_len, SamplingParams(), 5, None) == []


def test_batched_decoding_equals_row_by_row_and_honours_its_budget() -> None:
    lm, tok = load_torch("drafter"), task.WordTokenizer()
    prompts = [[tok.bos_id, *tok.encode(p.question)] for p in task.generate(4, 5)]
    rule = StopRule(12, lm.max_len, frozenset({tok.eos_id, tok.encode(";")[0]}))
    rows = decode_batch(
        lm.extend_batch, [lm.session() for _ in prompts], prompts, lambda _, lg: argmax(lg), rule
    )
    for p, row in zip(prompts, rows, strict=True):
        assert row == decode(lm.session(), p, argmax, rule)
        assert row.stop in (Stop.STOP_ID, Stop.MAX_NEW) and row.finished
    budget = sum(len(r.tokens) for r in rows) - 2
    cut = decode_batch(
        lm.extend_batch,
        [lm.session() for _ in prompts],
        prompts,
        lambda _, lg: argmax(lg),
        rule,
        budget,
    )
    assert sum(len(r.tokens) for r in cut) == budget
    assert any(r.stop is Stop.BUDGET for r in cut)
    assert all(r.tokens == full.tokens[: len(r.tokens)] for r, full in zip(cut, rows, strict=True))


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
