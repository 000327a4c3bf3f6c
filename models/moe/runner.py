"""Building the bundled MoE for offloaded serving: its dense part, and its predictor."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from models.moe.model import MoELM, load_moe, moe_dir
from models.moe.predictor import CrossLayerPredictor, Norm


def dense_only(checkpoint: str | Path) -> tuple[MoELM, Path]:
    """The model with its experts dropped (they come through an executor), and its directory."""
    directory = moe_dir(checkpoint)
    module = load_moe(directory)
    for block in module.model.layers:
        block.block_sparse_moe.experts = nn.ModuleList()  # frees the expert weights
    return module, directory


def predictor_of(module: MoELM) -> CrossLayerPredictor:
    """Cross-layer predictor from each block's MoE norm and router (copied to numpy)."""
    norms, routers = [], []
    for block in module.model.layers:
        ln = block.post_attention_layernorm
        norms.append(
            Norm(ln.weight.detach().numpy().copy(), ln.bias.detach().numpy().copy(), ln.eps)
        )
        routers.append(block.block_sparse_moe.gate.weight.detach().numpy().copy())
    return CrossLayerPredictor(norms, routers)
