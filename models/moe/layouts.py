"""Where each expert's tensors live in the safetensors layouts real MoE checkpoints use.

- Mixtral (and the bundled model): ``model.layers.L.block_sparse_moe.experts.E.w1|w3|w2.weight``
  (gate, up, down), router ``model.layers.L.block_sparse_moe.gate.weight``;
- OLMoE and Qwen2-MoE: ``model.layers.L.mlp.experts.E.gate_proj|up_proj|down_proj.weight``,
  router ``model.layers.L.mlp.gate.weight``; Qwen2-MoE adds ``mlp.shared_expert.*`` and
  ``mlp.shared_expert_gate.weight``, which stay resident (every token uses them).
"""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import NamedTuple

PARTS = ("gate", "up", "down")  # the three weights of a SwiGLU expert, canonical names


class Layout(str, enum.Enum):
    """A checkpoint's key layout."""

    MIXTRAL = "mixtral"
    OLMOE = "olmoe"
    QWEN2_MOE = "qwen2_moe"


class ExpertKey(NamedTuple):
    """One expert of one layer."""

    layer: int
    expert: int


_MIXTRAL_PARTS = {"gate": "w1", "up": "w3", "down": "w2"}
_HF_PARTS = {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"}


def moe_prefix(layout: Layout, layer: int) -> str:
    """The module path of layer ``layer``'s sparse MoE block."""
    block = "block_sparse_moe" if layout is Layout.MIXTRAL else "mlp"
    return f"model.layers.{layer}.{block}"


def expert_tensor(layout: Layout, key: ExpertKey, part: str) -> str:
    """The safetensors key of one part (gate, up, down) of an expert."""
    names = _MIXTRAL_PARTS if layout is Layout.MIXTRAL else _HF_PARTS
    if part not in names:
        raise ValueError(f"part: {part!r} is not one of {PARTS}")
    return f"{moe_prefix(layout, key.layer)}.experts.{key.expert}.{names[part]}.weight"


def router_tensor(layout: Layout, layer: int) -> str:
    """The safetensors key of layer ``layer``'s router."""
    return f"{moe_prefix(layout, layer)}.gate.weight"


def is_expert_tensor(name: str) -> bool:
    """Whether a key belongs to a routed expert (what offloading moves)."""
    return ".experts." in name


def detect_layout(directory: Path) -> Layout:
    """The layout of a checkpoint directory, from its config.json."""
    cfg = json.loads((directory / "config.json").read_text())
    kind = cfg.get("model_type") or cfg.get("arch", "")
    if kind in ("mixtral", "tandem-moe"):
        return Layout.MIXTRAL
    if kind == "olmoe":
        return Layout.OLMOE
    if kind == "qwen2_moe":
        return Layout.QWEN2_MOE
    raise ValueError(f"config.json: model_type {kind!r} is not a MoE layout served here")
