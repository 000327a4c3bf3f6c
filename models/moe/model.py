"""The bundled MoE target: TinyLM's attention with a sparse SwiGLU MoE in every block.

Parameter names follow Mixtral's layout, so each expert is addressable on disk on its own:
``model.layers.L.block_sparse_moe.experts.E.w1|w2|w3.weight`` (gate, down, up) and the router
``model.layers.L.block_sparse_moe.gate.weight``. The forward signature is TinyLM's, so
:class:`models.torch_backend.TorchLM` serves it with sessions and batching unchanged.

Where the experts run is pluggable: a block hands each hit expert's rows to an
:class:`ExpertExecutor`; the default runs them on the module's own weights, the offloading
runtime (``models.moe.offload``) fetches or ships them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Protocol

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from models.moe.config import MoEConfig
from models.moe.routing import ExpertRows, combine, expert_mlp, expert_plan, fuse, route
from models.torch_backend import CHECKPOINT_DIR
from models.transformer import causal_logits

MOE_CHECKPOINT = "moe-target"


class ExpertExecutor(Protocol):
    """Runs one MoE layer's hit experts on their rows."""

    def run(
        self, layer: int, hidden: torch.Tensor, plan: list[ExpertRows], resid: torch.Tensor
    ) -> dict[int, torch.Tensor]:
        """Expert index -> its output rows [n, D] (before routing weights).

        ``hidden`` [N, D] is the layer's normed MoE input, ``resid`` [N, D] the residual stream
        it came from (what a cross-layer predictor reads).
        """
        ...


class Expert(nn.Module):
    """One SwiGLU expert with Mixtral's names: w1 gate, w3 up, w2 down."""

    def __init__(self, d_model: int, d_expert: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(d_model, d_expert, bias=False)
        self.w2 = nn.Linear(d_expert, d_model, bias=False)
        self.w3 = nn.Linear(d_model, d_expert, bias=False)


class SparseMoE(nn.Module):
    """Router (``gate``) and experts of one layer."""

    def __init__(self, cfg: MoEConfig) -> None:
        super().__init__()
        self.gate = nn.Linear(cfg.d_model, cfg.n_experts, bias=False)
        self.experts = nn.ModuleList(
            Expert(cfg.d_model, cfg.d_expert) for _ in range(cfg.n_experts)
        )

    def weights(self, e: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused gate-up [2I, D] and down [D, I] of expert ``e``."""
        ex = self.experts[e]
        return fuse(ex.w1.weight, ex.w3.weight), ex.w2.weight


class ResidentExecutor:
    """Runs every expert on the module's own weights (the all-resident reference)."""

    def __init__(self, model: MoELM) -> None:
        self.model = model

    def run(
        self, layer: int, hidden: torch.Tensor, plan: list[ExpertRows], resid: torch.Tensor
    ) -> dict[int, torch.Tensor]:
        moe = self.model.model.layers[layer].block_sparse_moe
        return {r.expert: expert_mlp(hidden[r.token_idx], *moe.weights(r.expert)) for r in plan}


class MoEBlock(nn.Module):
    """Pre-norm attention, then a pre-norm sparse MoE."""

    def __init__(self, cfg: MoEConfig, index: int) -> None:
        super().__init__()
        self.cfg, self.index = cfg, index
        self.input_layernorm = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.o_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.post_attention_layernorm = nn.LayerNorm(cfg.d_model)
        self.block_sparse_moe = SparseMoE(cfg)
        self.aux_loss = torch.zeros(())  # load-balancing loss of the last training forward

    def attend(
        self, x: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, d = x.shape
        h, hd = self.cfg.n_heads, self.cfg.head_dim
        q, k, v = self.qkv(self.input_layernorm(x)).split(d, dim=-1)
        q = q.view(b, t, h, hd).transpose(1, 2)  # [B, H, T, hd]
        k = torch.cat([past_k, k.view(b, t, h, hd).transpose(1, 2)], dim=2)
        v = torch.cat([past_v, v.view(b, t, h, hd).transpose(1, 2)], dim=2)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)  # [B, H, T, S+T]
        scores = scores.masked_fill(~mask[:, None], float("-inf"))
        att = torch.softmax(scores, dim=-1) @ v
        return x + self.o_proj(att.transpose(1, 2).reshape(b, t, d)), k, v

    def moe(self, x: torch.Tensor, executor: ExpertExecutor) -> torch.Tensor:
        b, t, d = x.shape
        resid = x.reshape(-1, d)
        hidden = self.post_attention_layernorm(x).reshape(-1, d)  # [N, D]
        logits = self.block_sparse_moe.gate(hidden)  # [N, E]
        weights, index = route(logits, self.cfg.top_k, normalize=True)
        if self.training:
            self.aux_loss = balance_loss(logits, index, self.cfg.n_experts)
        plan = expert_plan(index, self.cfg.n_experts)
        outputs = executor.run(self.index, hidden, plan, resid)
        x = x + combine(hidden, plan, outputs, weights).view(b, t, d)
        after = getattr(executor, "after", None)
        if after is not None:  # the next block's input is known: a sharper prediction
            after(self.index, x.reshape(-1, d))
        return x


def balance_loss(logits: torch.Tensor, index: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Switch-style load balancing: E x sum_e (share of routed slots) x (mean router prob)."""
    probs = torch.softmax(logits.float(), dim=-1).mean(0)  # [E]
    share = F.one_hot(index, n_experts).float().sum((0, 1)) / index.numel()  # [E]
    return n_experts * (share * probs).sum()


class MoEBody(nn.Module):
    """Embeddings and blocks (the ``model.`` prefix of every key)."""

    def __init__(self, cfg: MoEConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.embed_positions = nn.Embedding(cfg.max_len, cfg.d_model)
        self.layers = nn.ModuleList(MoEBlock(cfg, i) for i in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        nn.init.normal_(self.embed_tokens.weight, std=0.02)
        nn.init.normal_(self.embed_positions.weight, std=0.02)


class MoELM(nn.Module):
    """The MoE language model, with TinyLM's forward signature and a tied output head."""

    def __init__(self, cfg: MoEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = MoEBody(cfg)
        self.executor: ExpertExecutor = ResidentExecutor(self)

    def empty_cache(self, batch: int) -> torch.Tensor:
        c = self.cfg
        return torch.zeros(c.n_layers, batch, c.n_heads, 0, c.head_dim)

    def forward(
        self,
        input_ids: torch.Tensor,  # [B, T] int64
        position_ids: torch.Tensor,  # [B, T] int64
        past_keys: torch.Tensor,  # [L, B, H, S, hd]
        past_values: torch.Tensor,  # [L, B, H, S, hd]
        attention_mask: torch.Tensor,  # [B, T, S+T] bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits [B, T, V] and the present cache [L, B, H, S+T, hd] for keys and values."""
        m = self.model
        x = m.embed_tokens(input_ids) + m.embed_positions(position_ids)
        keys, values = [], []
        for i, block in enumerate(m.layers):
            x, k, v = block.attend(x, past_keys[i], past_values[i], attention_mask)
            x = block.moe(x, self.executor)
            keys.append(k)
            values.append(v)
        logits = m.norm(x) @ m.embed_tokens.weight.T
        return logits, torch.stack(keys), torch.stack(values)

    def train_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Causal logits [B, T, V] over whole sequences, no cache (training and scoring)."""
        return causal_logits(self, input_ids)

    def aux_loss(self) -> torch.Tensor:
        """Mean load-balancing loss of the last training forward over the layers."""
        return torch.stack([b.aux_loss for b in self.model.layers]).mean()


def save_moe(module: MoELM, directory: Path) -> None:
    """config.json + model.safetensors (fp32, Mixtral expert keys) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    module.cfg.save(directory / "config.json")
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"))


def moe_dir(name_or_path: str | Path = MOE_CHECKPOINT) -> Path:
    """A bundled MoE checkpoint name or a directory."""
    p = Path(name_or_path)
    if p.is_dir():
        return p
    bundled = CHECKPOINT_DIR / str(name_or_path)
    if bundled.is_dir():
        return bundled
    raise FileNotFoundError(f"no MoE checkpoint named or at {name_or_path!r}")


def load_moe(name_or_path: str | Path = MOE_CHECKPOINT) -> MoELM:
    """The MoELM of a checkpoint, in eval mode, every expert resident."""
    d = moe_dir(name_or_path)
    module = MoELM(MoEConfig.load(d / "config.json"))
    module.load_state_dict(load_file(str(d / "model.safetensors")))
    return module.eval()
