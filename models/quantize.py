"""int8 quantization of exported graphs, and the proof that it cannot saturate on x86 AVX2.

ONNX Runtime multiplies uint8 activations by int8 weights. On x86 CPUs with AVX2 but without VNNI
it does so with ``vpmaddubsw``, which adds the products of two neighbouring K positions into a
signed 16-bit lane *with saturation*: ``a0*w0 + a1*w1`` is clamped to [-32768, 32767]. With full
8-bit weights (|w| <= 127) and activations up to 255 that sum reaches 64770 and is clipped, so an
AVX2-only machine computes different logits than a VNNI or ARM machine. With 7-bit weights
(``reduce_range``, |w| <= 64) the sum stays within 255 * 128 = 32640, so nothing can saturate and
every CPU computes the same integers.

The schemes compared by ``python -m models.quant_compare`` live in ``SCHEMES``; ``DEFAULT`` is the
one the export uses, picked by that measurement (README, "int8 drafter"). ``avx2_evaluator`` runs a
quantized graph with the AVX2 arithmetic emulated in numpy, so the saturation can be measured on
any machine.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

if TYPE_CHECKING:  # the backend imports onnxruntime, needed only by emulated_lm
    from models.onnx_backend import OnnxLM

# vpmaddubsw clamps each pair sum to a signed 16-bit lane.
INT16_MAX = 32767
# The largest uint8 activation ONNX Runtime's dynamic quantization produces.
U8_MAX = 255
# Ops whose second input is a weight multiplied against uint8 activations.
_INTEGER_MATMULS = ("MatMulInteger",)
# Float ops that a QDQ graph feeds with a DequantizeLinear'd weight.
_FLOAT_MATMULS = ("MatMul", "Gemm")


@dataclass(frozen=True)
class QuantScheme:
    """One way of quantizing the weights (and, for static schemes, the activations) to 8 bits."""

    name: str  # registry key, also the label in the comparison table
    per_channel: bool  # one scale per output column rather than one per weight matrix
    reduce_range: bool  # 7-bit weights (|w| <= 64): no AVX2 pair sum can saturate
    static: bool  # calibrated QDQ with int8 activations (s8s8) instead of dynamic u8s8


SCHEMES: dict[str, QuantScheme] = {
    s.name: s
    for s in (
        QuantScheme("dynamic", per_channel=False, reduce_range=False, static=False),
        QuantScheme("dynamic-reduce-range", per_channel=False, reduce_range=True, static=False),
        QuantScheme("dynamic-per-channel", per_channel=True, reduce_range=False, static=False),
        QuantScheme(
            "dynamic-per-channel-reduce-range", per_channel=True, reduce_range=True, static=False
        ),
        QuantScheme("static-qdq", per_channel=False, reduce_range=False, static=True),
        QuantScheme("static-qdq-reduce-range", per_channel=False, reduce_range=True, static=True),
    )
}
# Chosen by `python -m models.quant_compare` on the trained drafter (figures in the README).
DEFAULT = SCHEMES["dynamic-per-channel-reduce-range"]


def quantize(
    src: Path, dst: Path, scheme: QuantScheme = DEFAULT, calibration: Iterable[dict] = ()
) -> Path:
    """Write the int8 twin of the fp32 graph ``src`` to ``dst``; static schemes need feeds."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    # Attention's activation x activation products stay fp32, as in the dynamic scheme.
    extra = {"MatMulConstBOnly": True}
    if not scheme.static:
        quantize_dynamic(
            str(src),
            str(dst),
            per_channel=scheme.per_channel,
            reduce_range=scheme.reduce_range,
            weight_type=QuantType.QInt8,
            extra_options=extra,
        )
        return dst
    feeds = list(calibration)
    if not feeds:
        raise ValueError(f"scheme {scheme.name!r} needs calibration feeds")
    quantize_static(
        str(src),
        str(dst),
        _Feeds(feeds),
        quant_format=QuantFormat.QDQ,
        # Only the weight products: quantizing the cache's Concat or the mask's Where as well
        # breaks the graph (calibrating an empty past gives no range).
        op_types_to_quantize=["MatMul"],
        per_channel=scheme.per_channel,
        reduce_range=scheme.reduce_range,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        extra_options={**extra, "WeightSymmetric": True, "ActivationSymmetric": False},
    )
    return dst


class _Feeds:
    """The CalibrationDataReader interface over a list of input feeds."""

    def __init__(self, feeds: list[dict]) -> None:
        self._it: Iterator[dict] = iter(feeds)

    def get_next(self) -> dict | None:
        """The next feed, or None when all were read."""
        return next(self._it, None)


def int8_matmul_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every int8 weight that a CPU multiplies against 8-bit activations, as [K, N] arrays.

    That is the B input of MatMulInteger (dynamic graphs) and the int8 input of a
    DequantizeLinear feeding MatMul or Gemm (QDQ graphs, which ONNX Runtime fuses to integer
    products on the CPU). Embedding tables (Gather) are only dequantized, never multiplied.
    """
    inits = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.op_type)
    found: dict[str, np.ndarray] = {}
    for node in model.graph.node:
        name = ""
        if node.op_type in _INTEGER_MATMULS and len(node.input) > 1:
            name = node.input[1]
        elif node.op_type == "DequantizeLinear" and any(
            op in _FLOAT_MATMULS for op in consumers.get(node.output[0], [])
        ):
            name = node.input[0]
        init = inits.get(name)
        if init is not None and init.data_type == onnx.TensorProto.INT8:
            found[name] = onnx.numpy_helper.to_array(init)
    return found


def worst_pair_sum(weights: np.ndarray) -> int:
    """The largest u8 x s8 pair sum any K-neighbours of one column can reach, over all columns.

    Bounded by the two largest |w| of each column, whichever K positions the kernel pairs, with
    the activation at 255 where the weight is non-zero (and of the weight's sign for the product
    to add up; 0 where it is not).
    """
    w = np.abs(weights.astype(np.int32)).reshape(weights.shape[0], -1)  # [K, N]
    top2 = np.sort(w, axis=0)[-2:].sum(axis=0)  # [N]
    return int(U8_MAX * top2.max())


def saturating_u8s8_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """sum_k a[..., k] * b[k, n] as AVX2 computes it: K-pairs (2i, 2i+1) clamped to int16.

    a: [..., M, K] uint8; b: [K, N] int8. Returns int32 [..., M, N], raw (zero points not applied).
    """
    k = a.shape[-1]
    a32, b32 = a.astype(np.int32), b.astype(np.int32)
    if k % 2:  # the kernel pads K with zeros
        a32 = np.concatenate([a32, np.zeros((*a32.shape[:-1], 1), np.int32)], axis=-1)
        b32 = np.concatenate([b32, np.zeros((1, b32.shape[1]), np.int32)], axis=0)
    prod = a32[..., :, :, None] * b32  # [..., M, K, N]
    pairs = prod.reshape(*prod.shape[:-2], -1, 2, prod.shape[-1]).sum(-2)  # [..., M, K/2, N]
    return np.clip(pairs, -INT16_MAX - 1, INT16_MAX).sum(-2).astype(np.int32)


def _matmul_integer(
    a: np.ndarray, b: np.ndarray, a_zp: np.ndarray | None, b_zp: np.ndarray | None, sat: bool
) -> np.ndarray:
    """MatMulInteger, exact (int32) or with the AVX2 pair saturation."""
    azp = np.int32(0) if a_zp is None else a_zp.astype(np.int32)
    bzp = np.zeros(b.shape[-1], np.int32) if b_zp is None else b_zp.astype(np.int32)
    if not sat:
        return np.matmul(a.astype(np.int32) - azp, b.astype(np.int32) - bzp).astype(np.int32)
    # The kernel multiplies raw values and corrects for the zero points with row/column sums.
    raw = saturating_u8s8_matmul(a, b)
    k = a.shape[-1]
    col = b.astype(np.int32).sum(0)  # [N]
    row = a.astype(np.int32).sum(-1, keepdims=True)  # [..., M, 1]
    return (raw - azp * col - row * bzp + k * azp * bzp).astype(np.int32)


class MatMulIntegerAvx2(OpRun):
    """MatMulInteger with the u8s8 pair saturation of AVX2 CPUs without VNNI."""

    op_domain = ""

    def _run(
        self,
        a: np.ndarray,
        b: np.ndarray,
        a_zero_point: np.ndarray | None = None,
        b_zero_point: np.ndarray | None = None,
    ) -> tuple[np.ndarray]:
        return (_matmul_integer(a, b, a_zero_point, b_zero_point, sat=True),)


class MatMulIntegerExact(MatMulIntegerAvx2):
    """MatMulInteger in exact int32 arithmetic (VNNI, ARM), for comparison."""

    def _run(
        self,
        a: np.ndarray,
        b: np.ndarray,
        a_zero_point: np.ndarray | None = None,
        b_zero_point: np.ndarray | None = None,
    ) -> tuple[np.ndarray]:
        return (_matmul_integer(a, b, a_zero_point, b_zero_point, sat=False),)


def _named(cls: type[OpRun]) -> type[OpRun]:
    # The reference evaluator looks custom ops up by class name.
    return type("MatMulInteger", (cls,), {})


def avx2_evaluator(model: onnx.ModelProto, saturate: bool = True) -> ReferenceEvaluator:
    """A numpy evaluator of a dynamic int8 graph, with AVX2's arithmetic (or the exact one)."""
    op = _named(MatMulIntegerAvx2 if saturate else MatMulIntegerExact)
    return ReferenceEvaluator(model, new_ops=[op])


def emulated_lm(path: Path, saturate: bool = True) -> OnnxLM:
    """The int8 graph at ``path`` as a model whose integer products run in numpy, with AVX2's
    pair saturation (or exact, as on VNNI and ARM CPUs). Slow: for measurements and tests.

    It is an ``OnnxLM`` whose ONNX Runtime session is swapped for the reference evaluator, so
    caching, batching and the per-call activation quantization are those of the real backend.
    """
    from models.onnx_backend import OnnxLM

    lm = OnnxLM(path, name=f"{Path(path).stem}-{'avx2' if saturate else 'exact'}")
    lm.ort = avx2_evaluator(onnx.load(str(path)), saturate)  # same run(names, feed) signature
    return lm
