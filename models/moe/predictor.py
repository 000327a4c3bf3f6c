"""Cross-layer gate prediction: layer l+1's router applied to layer l's residual stream.

The residual stream changes little from one block to the next, so normalising layer l's
pre-MoE residual with layer l+1's norm and scoring it with layer l+1's router names the experts
layer l+1 will pick before layer l has run its experts (Fate; mixtral-offloading). Numpy only:
the prediction needs no bit-exactness and runs on the edge beside the cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Norm:
    """The norm in front of a layer's router: LayerNorm (with bias) or RMSNorm (bias None)."""

    weight: np.ndarray  # [D]
    bias: np.ndarray | None  # [D], None for RMSNorm
    eps: float

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float32)
        if self.bias is None:
            return x / np.sqrt((x * x).mean(-1, keepdims=True) + self.eps) * self.weight
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + self.eps) * self.weight + self.bias


class CrossLayerPredictor:
    """Predicts each layer's experts from the previous layer's residual stream."""

    def __init__(self, norms: Sequence[Norm], routers: Sequence[np.ndarray]) -> None:
        if len(norms) != len(routers):
            raise ValueError("one norm per router")
        self.norms = list(norms)
        self.routers = [np.asarray(r, np.float32) for r in routers]  # [E, D] each

    @property
    def n_layers(self) -> int:
        return len(self.routers)

    def scores(self, layer: int, resid: np.ndarray) -> np.ndarray:
        """Router logits [N, E] layer ``layer`` would give the rows of ``resid`` [N, D]."""
        return self.norms[layer](resid) @ self.routers[layer].T

    def predict_rows(self, layer: int, resid: np.ndarray, k: int) -> np.ndarray:
        """Each row's ``k`` predicted experts [N, k] for layer ``layer``, best first."""
        return np.argsort(-self.scores(layer, resid), axis=-1, kind="stable")[:, :k]

    def predict(self, layer: int, resid: np.ndarray, k: int) -> list[int]:
        """The experts any row is predicted to want, ranked by how many rows want them."""
        top = self.predict_rows(layer, resid, k)
        votes = np.bincount(top.ravel(), minlength=self.routers[layer].shape[0])
        return [int(e) for e in np.argsort(-votes, kind="stable") if votes[e] > 0]


def recall(predicted: Sequence[int], actual: Sequence[int]) -> float:
    """|predicted ∩ actual| / |actual| (recall@k for k = len(predicted))."""
    return len(set(predicted) & set(actual)) / len(set(actual)) if actual else 1.0


@dataclass
class RecallMeter:
    """Recall@k per predicted layer, summed over predictions."""

    hits: dict[int, int]
    wanted: dict[int, int]

    @classmethod
    def new(cls) -> RecallMeter:
        return cls({}, {})

    def add(self, layer: int, predicted: Sequence[int], actual: Sequence[int]) -> None:
        self.hits[layer] = self.hits.get(layer, 0) + len(set(predicted) & set(actual))
        self.wanted[layer] = self.wanted.get(layer, 0) + len(set(actual))

    def add_rows(self, layer: int, predicted: np.ndarray, actual: Sequence[set[int]]) -> None:
        """Per-row recall: row i's predicted experts against the experts row i was routed to."""
        for row, want in zip(predicted, actual, strict=True):
            self.add(layer, [int(e) for e in row], sorted(want))

    def per_layer(self) -> dict[int, float]:
        return {layer: self.hits[layer] / w for layer, w in sorted(self.wanted.items()) if w}

    def overall(self) -> float:
        total = sum(self.wanted.values())
        return sum(self.hits.values()) / total if total else 0.0
