"""The bundled int8 drafter computes the same integers on every CPU: nothing saturates on AVX2.

x86 CPUs without VNNI add u8 x s8 products of neighbouring K positions into a saturating int16
lane (``vpmaddubsw``). This machine may have VNNI, so the AVX2 arithmetic is emulated in numpy
(``models.quantize``) and checked against ONNX Runtime where both must agree.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest

from models import task
from models.onnx_backend import CHECKPOINT_DIR, OnnxLM, load_onnx
from models.quantize import (
    DEFAULT,
    INT16_MAX,
    SCHEMES,
    emulated_lm,
    int8_matmul_weights,
    quantize,
    saturating_u8s8_matmul,
    worst_pair_sum,
)

DRAFTER = CHECKPOINT_DIR / "drafter"


def prompts(n: int) -> list[list[int]]:
    """Held-out questions with their solutions, as the drafter sees them in speculation."""
    tok = task.WordTokenizer()
    return [
        [tok.bos_id, *tok.encode(f"{p.question} {p.solution}")]
        for p in task.generate(n, task.HELDOUT_SEED)
    ]


def decode_logits(lm: OnnxLM, ids: list[int]) -> np.ndarray:
    """Logits of a prefill of half the sequence, then one token at a time (as a drafter runs)."""
    s, half = lm.session(), len(ids) // 2
    rows = [s.extend(ids[:half])] + [s.extend([t]) for t in ids[half:]]
    return np.concatenate(rows)


def test_pair_saturation_emulation() -> None:
    a = np.array([[255, 255, 255]], dtype=np.uint8)
    full = np.array([[127], [127], [127]], dtype=np.int8)
    # Pairs (0, 1) and (2, pad): 64770 clamps to 32767, the odd K is padded with a zero.
    assert saturating_u8s8_matmul(a, full)[0, 0] == INT16_MAX + 255 * 127
    reduced = np.array([[64], [64], [-64]], dtype=np.int8)
    exact = a.astype(np.int32) @ reduced.astype(np.int32)
    np.testing.assert_array_equal(saturating_u8s8_matmul(a, reduced), exact)
    assert worst_pair_sum(full) == 2 * 255 * 127 and worst_pair_sum(reduced) == 255 * 128


def test_bundled_int8_weights_cannot_saturate_on_avx2() -> None:
    model = onnx.load(str(DRAFTER / "model.int8.onnx"))
    weights = int8_matmul_weights(model)
    products = {n.input[1] for n in model.graph.node if n.op_type == "MatMulInteger"}
    assert products and products == set(weights)  # every integer product is checked
    # Whichever two K positions a kernel pairs, 255 * (|w0| + |w1|) fits in int16.
    worst = {name: worst_pair_sum(w) for name, w in weights.items()}
    assert max(worst.values()) <= INT16_MAX, worst
    assert DEFAULT.reduce_range


def test_emulation_reproduces_onnxruntime() -> None:
    lm, exact = load_onnx(DRAFTER), emulated_lm(DRAFTER / "model.int8.onnx", saturate=False)
    for ids in prompts(3):
        np.testing.assert_allclose(decode_logits(exact, ids), decode_logits(lm, ids), atol=1e-4)


def test_bundled_int8_logits_are_the_same_with_avx2_arithmetic() -> None:
    path = DRAFTER / "model.int8.onnx"
    avx2, exact = emulated_lm(path, saturate=True), emulated_lm(path, saturate=False)
    for ids in prompts(8):
        np.testing.assert_array_equal(decode_logits(avx2, ids), decode_logits(exact, ids))


@pytest.mark.parametrize("scheme", ["dynamic", "dynamic-per-channel"])
def test_full_range_weights_do_saturate(scheme: str, tmp_path: Path) -> None:
    # The quantization the drafter used to ship: the checks above would catch it.
    (tmp_path / "config.json").write_bytes((DRAFTER / "config.json").read_bytes())
    out = quantize(DRAFTER / "model.onnx", tmp_path / "model.int8.onnx", SCHEMES[scheme])
    weights = int8_matmul_weights(onnx.load(str(out)))
    assert max(worst_pair_sum(w) for w in weights.values()) > INT16_MAX
    avx2, exact = emulated_lm(out, saturate=True), emulated_lm(out, saturate=False)
    differs = [
        not np.array_equal(decode_logits(avx2, ids), decode_logits(exact, ids))
        for ids in prompts(8)
    ]
    assert any(differs)


@pytest.mark.skipif(
    shutil.which("qemu-x86_64") is None or platform.machine() != "x86_64",
    reason="needs qemu-user (Debian: qemu-user) to run ONNX Runtime on an AVX2-only CPU model",
)
def test_onnxruntime_on_an_avx2_only_cpu_gives_the_same_logits(tmp_path: Path) -> None:
    # The real kernels: qemu's Haswell has AVX2 and no AVX512/VNNI, so ONNX Runtime picks its
    # vpmaddubsw path there (measured: the old full-range graph moved logits by 1.9 under it).
    code = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_quantize import DRAFTER, decode_logits, prompts
        from models.onnx_backend import load_onnx
        lm = load_onnx(DRAFTER)
        np.save(sys.argv[1], np.concatenate([decode_logits(lm, ids) for ids in prompts(4)]))
        """
    )
    native, haswell = tmp_path / "native.npy", tmp_path / "haswell.npy"
    for cmd in ([sys.executable], ["qemu-x86_64", "-cpu", "Haswell", sys.executable]):
        out = native if len(cmd) == 1 else haswell
        res = subprocess.run(
            [*cmd, "-c", code, str(out)], capture_output=True, text=True, timeout=240
        )
        assert res.returncode == 0, res.stderr[-2000:]
    np.testing.assert_allclose(np.load(haswell), np.load(native), atol=1e-4)
