"""Optional int8 experts: symmetric per-output-row scales. Lossy, and flagged as such.

An int8 expert moves about a quarter of the fp32 bytes; its logits differ from the all-resident
run, so every figure measured with it says ``lossy``.
"""

from __future__ import annotations

import numpy as np

from models.moe.store import ExpertTensors

LOSSY = True  # int8 experts never give the all-resident logits


def quantize_rows(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 weights [R, C] and float32 scales [R] with w ~ q x scale[:, None]."""
    w = np.asarray(w, np.float32)
    scale = np.abs(w).max(axis=1) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def dequantize_rows(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """float32 [R, C] from int8 rows and their scales."""
    return q.astype(np.float32) * scale[:, None].astype(np.float32)


def int8_roundtrip(t: ExpertTensors) -> ExpertTensors:
    """What an expert becomes after int8 quantization (for error measurements)."""
    return ExpertTensors(*(dequantize_rows(*quantize_rows(a)) for a in (t.gate, t.up, t.down)))
