"""Real MoE checkpoints (Mixtral, OLMoE, Qwen2-MoE) served with their experts offloaded.

transformers builds the dense part (embeddings, attention, norms, routers, Qwen2-MoE's shared
expert) from a local directory; each layer's fused experts module is then swapped for
:class:`OffloadedExperts`, which gets its weights one expert at a time through an
``ExpertExecutor`` (from the per-expert keys on disk, a cloud node, or remote compute). The swap
keeps transformers' routing and its expert loop order, so the logits equal transformers' own
forward with every expert resident.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from models.moe.layouts import Layout, detect_layout
from models.moe.model import ExpertExecutor
from models.moe.routing import combine, expert_plan


class OffloadedExperts(nn.Module):
    """Drop-in for transformers' ``*Experts`` module: same call, experts from an executor."""

    def __init__(self, layer: int, n_experts: int, executor: ExpertExecutor) -> None:
        super().__init__()
        self.layer, self.n_experts, self.executor = layer, n_experts, executor

    def forward(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        plan = expert_plan(top_k_index, self.n_experts)
        outputs = self.executor.run(self.layer, hidden_states, plan, hidden_states)
        return combine(hidden_states, plan, outputs, top_k_weights)


def load_hf_moe(directory: Path) -> tuple[nn.Module, Layout]:
    """A local transformers MoE checkpoint with every expert resident, and its layout."""
    from transformers import AutoModelForCausalLM

    layout = detect_layout(directory)
    model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32)
    return model.eval(), layout


def moe_blocks(model: nn.Module, layout: Layout) -> list[nn.Module]:
    """Each layer's sparse MoE block (the module holding ``gate`` and ``experts``)."""
    # transformers names the module ``mlp`` in every layout (its on-disk keys differ)
    blocks = [getattr(layer, "mlp", None) for layer in model.model.layers]
    if any(b is None or not hasattr(b, "experts") for b in blocks):
        raise ValueError(f"{layout.value}: not every layer has a sparse MoE block (dense layers?)")
    return blocks  # type: ignore[return-value]


def offload_experts(model: nn.Module, layout: Layout, executor: ExpertExecutor) -> None:
    """Swap every layer's experts for :class:`OffloadedExperts` (their weights are freed)."""
    for i, block in enumerate(moe_blocks(model, layout)):
        block.experts = OffloadedExperts(i, block.experts.num_experts, executor)


def moe_shape(directory: Path) -> tuple[int, int, int]:
    """(MoE layers, experts per layer, hidden size) from a checkpoint's config.json."""
    cfg = json.loads((directory / "config.json").read_text())
    experts = cfg.get("num_local_experts") or cfg.get("num_experts") or cfg.get("n_experts")
    layers = cfg.get("num_hidden_layers") or cfg.get("n_layers")
    width = cfg.get("hidden_size") or cfg.get("d_model")
    return int(layers), int(experts), int(width)
