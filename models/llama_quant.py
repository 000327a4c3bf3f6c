"""int8 weights for exported real checkpoints, and why the default differs from the bundled
drafter's.

The bundled drafter uses ``models.quantize.DEFAULT``: dynamic quantization, int8 per-channel
weights against uint8 activations quantized per tensor at run time, with 7-bit weights so no
AVX2 pair sum can saturate. On SmolLM2-135M that scheme keeps the weights well but not the
activations: a Llama's normalized hidden states have a few channels far larger than the rest, and
one uint8 scale per tensor flattens every other channel. Its greedy agreement with fp32 is about
0.66 (``tandem drafters bench`` measures it as ``onnx int8 dynamic``), far from the 0.95 target.

``BLOCKWISE`` instead stores int8 weights in blocks of 32 along K, one scale per block
(ONNX Runtime's ``MatMulNBits`` with 8 bits), and quantizes activations per block of 32 at run
time (accuracy level 4), so an outlier channel only coarsens its own block. It agrees with fp32
on about 0.98 of greedy positions.

AVX2 without VNNI: ONNX Runtime's blockwise int8 kernels multiply with ``vpmaddubsw`` too. For
4-bit weights the unsigned operand is at most 15, so nothing saturates; for 8-bit weights we
could not establish from here (this CPU has AVX512-VNNI, whose ``vpdpbusd`` does not saturate
pairs) whether the 8-bit codes enter that instruction unsigned. The export therefore records
``avx2_saturation: "unverified"`` for ``BLOCKWISE`` and ``"impossible"`` for the dynamic
reduce-range scheme, and both can be produced (``--int8-scheme``); see docs/real-drafters.md.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import onnx

from models.quantize import INT16_MAX, SCHEMES, int8_matmul_weights, quantize, worst_pair_sum

BLOCKWISE = "blockwise-8bit"
BLOCK = 32  # weights and activations share a scale per this many K positions
ACCURACY_LEVEL = 4  # MatMulNBits: int8 activations per block (1 would compute in fp32, slowly)
INT8_SCHEMES = (BLOCKWISE, *SCHEMES)


def quantize_llama(src: Path, dst: Path, scheme: str = BLOCKWISE) -> dict[str, Any]:
    """Write the int8 twin of the fp32 graph ``src`` to ``dst``; return what was done."""
    if scheme == BLOCKWISE:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        # It logs one INFO line per node it leaves alone (hundreds).
        logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(
            logging.WARNING
        )
        q = MatMulNBitsQuantizer(
            onnx.load(str(src)),
            bits=8,
            block_size=BLOCK,
            is_symmetric=True,
            accuracy_level=ACCURACY_LEVEL,
        )
        q.process()
        q.model.save_model_to_file(str(dst), use_external_data_format=False)
        return {"scheme": scheme, "block": BLOCK, "avx2_saturation": "unverified"}
    if scheme not in SCHEMES:
        raise ValueError(f"int8 scheme {scheme!r} is not one of {INT8_SCHEMES}")
    if SCHEMES[scheme].static:
        raise ValueError(f"int8 scheme {scheme!r} needs calibration feeds; use a dynamic one")
    quantize(src, dst, SCHEMES[scheme])
    weights = int8_matmul_weights(onnx.load(str(dst))).values()
    worst = max((worst_pair_sum(w) for w in weights), default=0)
    return {
        "scheme": scheme,
        "worst_pair_sum": worst,
        "avx2_saturation": "possible" if worst > INT16_MAX else "impossible",
    }
