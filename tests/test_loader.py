"""Model specs resolve to the right backend and tokenizer, lazily."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from test_hf_backend import save_tiny_llama  # pytest puts tests/ on sys.path

import models.onnx_backend
import models.torch_backend
from models import task
from models.hf_backend import HFLM, HFTokenizer
from models.loader import load_lm
from models.onnx_backend import OnnxLM, export_checkpoint
from models.quant_compare import agreement, greedy_paths
from models.task import WordTokenizer
from models.torch_backend import TorchLM, save_checkpoint
from models.transformer import ModelConfig, TinyLM


def tiny_module(vocab_size: int) -> TinyLM:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=vocab_size, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_len=64)
    return TinyLM(cfg).eval()


@pytest.fixture(scope="module")
def bundled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint directory holding a model named 'tiny', with its ONNX exports."""
    root = tmp_path_factory.mktemp("checkpoints")
    save_checkpoint(tiny_module(WordTokenizer().vocab_size), root / "tiny")
    export_checkpoint(root / "tiny", int8=True)
    return root


@pytest.fixture
def as_bundled(bundled: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Make the temporary checkpoints the bundled ones for both backends."""
    monkeypatch.setattr(models.torch_backend, "CHECKPOINT_DIR", bundled)
    monkeypatch.setattr(models.onnx_backend, "CHECKPOINT_DIR", bundled)
    return bundled


def test_bare_names_pick_torch_or_int8(as_bundled: Path) -> None:
    lm, tok = load_lm("tiny")
    assert isinstance(lm, TorchLM) and isinstance(tok, WordTokenizer)
    q, qtok = load_lm("tiny-int8")
    assert isinstance(q, OnnxLM) and q.path == as_bundled / "tiny" / "model.int8.onnx"
    assert isinstance(qtok, WordTokenizer)
    # Structure only: 'tiny' is random, so the argmax agreement of its int8 twin means nothing.
    prompt = tok.encode("Q 17 + 5 * 3 ?")
    assert q.session().extend(prompt).shape == lm.session().extend(prompt).shape


def test_bundled_drafter_int8_loads_and_agrees_with_torch() -> None:
    lm, tok = load_lm("drafter")
    q, qtok = load_lm("drafter-int8")
    assert isinstance(q, OnnxLM) and q.path.name == "model.int8.onnx"
    assert isinstance(qtok, WordTokenizer) and q.vocab_size == lm.vocab_size
    problems = task.generate(30, task.HELDOUT_SEED)
    # Measured 0.996 over 500 held-out problems (README, "int8 drafter").
    assert agreement(q, greedy_paths(lm, problems)) >= 0.98


def test_prefixed_specs(as_bundled: Path) -> None:
    d = as_bundled / "tiny"
    t, _ = load_lm(f"torch:{d}")
    assert isinstance(t, TorchLM)
    o, _ = load_lm(f"onnx:{d / 'model.onnx'}")
    assert isinstance(o, OnnxLM) and o.path.name == "model.onnx"
    prompt = [1, 11, 20, 30]
    np.testing.assert_allclose(o.session().extend(prompt), t.session().extend(prompt), atol=1e-4)
    named, _ = load_lm("onnx:tiny")
    assert named.path.name == "model.int8.onnx"


def test_hf_spec(tmp_path: Path) -> None:
    save_tiny_llama(tmp_path)
    lm, tok = load_lm(f"hf:{tmp_path}")
    assert isinstance(lm, HFLM) and isinstance(tok, HFTokenizer)
    assert tok.decode(tok.encode("the cat")) == "the cat"
    with pytest.raises(FileNotFoundError):
        load_lm(f"hf:{tmp_path / 'absent'}")


def test_bad_specs(tmp_path: Path, as_bundled: Path) -> None:
    with pytest.raises(ValueError, match="'gguf'"):
        load_lm("gguf:model.gguf")
    with pytest.raises(ValueError, match="names no model"):
        load_lm("torch:")
    with pytest.raises(FileNotFoundError):
        load_lm("no-such-model")
    with pytest.raises(FileNotFoundError):
        load_lm("no-such-model-int8")
    save_checkpoint(tiny_module(8), tmp_path / "small")
    with pytest.raises(ValueError, match="task tokenizer"):
        load_lm(f"torch:{tmp_path / 'small'}")


def test_onnx_spec_needs_no_torch(bundled: Path) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules["torch"] = None  # any 'import torch' now raises ImportError
        from models.loader import load_lm
        lm, tok = load_lm({"onnx:" + str(bundled / "tiny")!r})
        print(lm.session().extend(tok.encode("Q 1 + 2 ?")).shape)
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"(5, {WordTokenizer().vocab_size})"
