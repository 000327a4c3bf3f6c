"""Top-k routing and the expert combine, in the exact op order transformers uses.

Every path that runs an expert (all resident, from disk, fetched from a cloud node, computed on
the cloud) goes through :func:`expert_mlp` on the same rows and :func:`combine` in ascending
expert order, which is what makes offloading lossless: the same floats meet the same ops.
The order matches transformers' Mixtral / OLMoE / Qwen2-MoE expert loop (fused gate-up matmul,
one ``index_add_`` per hit expert, ascending), so a real checkpoint served here gives the logits
transformers gives.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class ExpertRows:
    """The rows of one layer's flattened hidden states routed to one expert."""

    expert: int  # expert index in its layer
    top_k_pos: torch.Tensor  # [n] which of the token's k choices this is
    token_idx: torch.Tensor  # [n] row of the flattened hidden states


def route(
    router_logits: torch.Tensor, top_k: int, normalize: bool, float_softmax: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k weights [N, k] and indices [N, k] from router logits [N, E].

    ``normalize`` rescales the k weights to sum to 1 (Mixtral always; OLMoE and Qwen2-MoE when
    ``norm_topk_prob``). The weights come back in the logits' dtype, as transformers returns them.
    """
    probs = torch.softmax(router_logits.float(), dim=-1) if float_softmax else router_logits
    top_v, top_i = torch.topk(probs, top_k, dim=-1)
    if normalize:
        top_v /= top_v.sum(dim=-1, keepdim=True)
    return top_v.to(router_logits.dtype), top_i


def expert_plan(top_k_index: torch.Tensor, n_experts: int) -> list[ExpertRows]:
    """Which rows each hit expert serves, in ascending expert order (transformers' loop)."""
    with torch.no_grad():
        mask = F.one_hot(top_k_index, num_classes=n_experts + 1).permute(2, 1, 0)  # [E+1, k, N]
        hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero()
    plan = []
    for row in hit:
        e = int(row[0])
        if e == n_experts:
            continue
        top_k_pos, token_idx = torch.where(mask[e])
        plan.append(ExpertRows(e, top_k_pos, token_idx))
    return plan


def fuse(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """[2I, D] gate-up weight from the two [I, D] halves, the way transformers fuses on load."""
    return torch.cat([gate, up], dim=0)


def expert_mlp(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """One SwiGLU expert on rows x [n, D]: down(silu(gate x) * up x) -> [n, D]."""
    gate, up = F.linear(x, gate_up).chunk(2, dim=-1)
    return F.linear(F.silu(gate) * up, down)


def combine(
    hidden: torch.Tensor,
    plan: list[ExpertRows],
    outputs: Mapping[int, torch.Tensor],
    top_k_weights: torch.Tensor,
) -> torch.Tensor:
    """Sum of weighted expert outputs [N, D]; ``outputs[e]`` holds expert e's rows of ``plan``."""
    final = torch.zeros_like(hidden)
    for rows in plan:
        out = outputs[rows.expert] * top_k_weights[rows.token_idx, rows.top_k_pos, None]
        final.index_add_(0, rows.token_idx, out.to(final.dtype))
    return final
