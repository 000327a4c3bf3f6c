"""The export path on a tiny Llama directory (``hf:DIR``), so it is covered without downloads.

The model is random (``test_hf_backend.save_tiny_llama``): these checks are structural (files,
shapes, loading, the same function computed two ways), never numeric claims about quality; those
use SmolLM2 in ``test_llama_onnx.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_hf_backend import save_tiny_llama

from models.hf_backend import load_hf
from models.llama_onnx import export_llama
from models.onnx_lm import OnnxLlama, is_export_dir, load_export


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    src = tmp_path_factory.mktemp("tiny-llama")
    save_tiny_llama(src)
    out = tmp_path_factory.mktemp("tiny-onnx")
    assert export_llama(src, out) == out / "model.int8.onnx"
    return src, out


def test_a_directory_checkpoint_exports_and_loads(export) -> None:
    src, out = export
    assert is_export_dir(out) and is_export_dir(out / "model.onnx")
    for int8 in (False, True):
        lm, tok = load_export(out, int8=int8)
        assert isinstance(lm, OnnxLlama) and (lm.vocab_size, lm.max_len) == (15, 64)
        s = lm.session()
        ids = tok.encode("the cat sat on the mat")
        assert s.extend(ids).shape == (len(ids), 15) and s.length == len(ids)


def test_the_graph_computes_what_transformers_computes(export) -> None:
    src, out = export
    hf, tok = load_hf(src)
    lm, _ = load_export(out, int8=False)
    ids = tok.encode("the cat sat on the mat")
    s = lm.session()
    got = np.concatenate([s.extend(ids[:3]), s.extend(ids[3:4]), s.extend(ids[4:])])
    np.testing.assert_allclose(got, hf.session().extend(ids), atol=1e-4)


def test_a_session_cannot_grow_past_the_exported_length(export) -> None:
    _, out = export
    lm, _ = load_export(out, int8=False)
    s = lm.session()
    s.extend([3] * 64)
    with pytest.raises(ValueError, match="max_len"):
        s.extend([3])
    s.truncate(10)
    assert s.extend([4]).shape == (1, 15)


def test_missing_exports_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="onnx_lm.json"):
        load_export(tmp_path)
