"""Universal assisted decoding (models.uad): drafts travel as text between tokenizers.

The drafter here is the trained bundled drafter re-indexed to another vocabulary (different ids
and size, so a different fingerprint: token ids could not cross), drafting for the trained target.
The export CLI's dispatch for real checkpoints is checked without exporting anything.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_reasoning_grpc import RespelledTokenizer, respelled_drafter

from models import task
from models.fingerprint import fingerprint
from models.sampling import SamplingParams
from models.torch_backend import load_torch
from models.uad import TextVerifier, common_prefix, start_ids, text_after, uad_generate
from tandem import cli
from tandem.drafters_bench import greedy_timed


@pytest.fixture(scope="module")
def pair() -> tuple[object, task.WordTokenizer, object, RespelledTokenizer]:
    rt = RespelledTokenizer()
    return load_torch("target"), task.WordTokenizer(), respelled_drafter(rt), rt


def test_drafts_as_text_keep_the_targets_greedy_output(pair) -> None:
    target, wtok, drafter, rt = pair
    assert fingerprint(rt) != fingerprint(wtok)
    accepted = drafted = 0
    for p in task.generate(6, task.HELDOUT_SEED + 3):
        ids = start_ids(wtok, p.question)
        want = greedy_timed(target, ids, 40, wtok.eos_id).tokens
        got = uad_generate(
            target, wtok, drafter, rt, p.question, ids, 40, k=4, drafter_prefix=start_ids(rt, "")
        )
        assert got.tokens == want
        assert got.text == text_after(wtok, ids, want)  # the prompt text continues with it
        accepted, drafted = accepted + got.accepted, drafted + got.drafted
        assert got.rounds < len(want)  # drafts were used: fewer target passes than tokens
    assert accepted / drafted >= 0.5


def test_a_drafter_without_its_bos_still_cannot_change_the_output(pair) -> None:
    target, wtok, drafter, rt = pair
    p = task.generate(1, task.HELDOUT_SEED + 4)[0]
    ids = start_ids(wtok, p.question)
    got = uad_generate(target, wtok, drafter, rt, p.question, ids, 30, k=6)
    assert got.tokens == greedy_timed(target, ids, 30, wtok.eos_id).tokens


def test_text_the_target_cannot_tokenize_is_dropped_not_fatal(pair) -> None:
    target, wtok, _, _ = pair
    p = task.generate(1, task.HELDOUT_SEED)[0]
    v = TextVerifier(target, wtok, start_ids(wtok, p.question), 10)
    verdict = v.verify(" zebra unicorn")
    assert verdict.drafted == 0 and verdict.accepted == 0 and len(verdict.tokens) == 1
    assert verdict.tokens[0] == greedy_timed(target, v.prompt, 1, wtok.eos_id).tokens[0]


def test_sampling_across_tokenizers_is_refused(pair) -> None:
    target, wtok, drafter, rt = pair
    with pytest.raises(ValueError, match="greedy"):
        uad_generate(
            target, wtok, drafter, rt, "Q", [wtok.bos_id], 4, params=SamplingParams(temperature=0.8)
        )


def test_helpers() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2 and common_prefix([], [1]) == 0
    wtok = task.WordTokenizer()
    head = wtok.encode("Q 3 + 4 ?")
    assert text_after(wtok, head, wtok.encode("A 7")) == " A 7"


def test_export_onnx_sends_real_checkpoints_to_the_llama_exporter(monkeypatch) -> None:
    import models.llama_onnx

    calls = []

    def fake(source: str, int8: bool = True) -> Path:
        calls.append((source, int8))
        return Path("out.onnx")

    monkeypatch.setattr(models.llama_onnx, "export_llama", fake)
    assert cli.main(["export-onnx", "hf:/models/smol"]) == 0
    assert cli.main(["export-onnx", "/x/SmolLM2.gguf", "--fp32"]) == 0
    assert calls == [("/models/smol", True), ("/x/SmolLM2.gguf", False)]
