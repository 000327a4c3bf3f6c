"""A small decoder-only transformer whose forward pass takes and returns a stacked KV cache.

The cache layout, one tensor each for keys and values, [layers, batch, heads, positions, head_dim],
keeps the ONNX export to two cache inputs and lets the cloud batch sessions of different lengths:
the caller passes an attention mask [batch, new, past + new] saying which keys each new token sees.
Positions are learned embeddings added at the input, so key order inside the cache does not matter.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a model."""

    vocab_size: int  # number of token ids
    d_model: int = 128  # width of the residual stream
    n_layers: int = 2  # transformer blocks
    n_heads: int = 4  # attention heads per block
    d_ff: int = 512  # hidden width of each MLP
    max_len: int = 64  # longest sequence (learned position embeddings)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> ModelConfig:
        return cls(**json.loads(path.read_text()))


class Block(nn.Module):
    """Pre-norm attention + MLP."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.up = nn.Linear(cfg.d_model, cfg.d_ff)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model)

    def forward(
        self, x: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        # [B, T, D] -> [B, H, T, hd]
        q = q.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = torch.cat([past_k, k.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)], dim=2)
        v = torch.cat([past_v, v.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)], dim=2)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)  # [B, H, T, S+T]
        scores = scores.masked_fill(~mask[:, None], float("-inf"))
        att = torch.softmax(scores, dim=-1) @ v  # [B, H, T, hd]
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        x = x + self.down(F.gelu(self.up(self.ln2(x))))
        return x, k, v


class TinyLM(nn.Module):
    """Token + position embeddings, blocks, final norm, tied output head."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.max_len, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        nn.init.normal_(self.tok.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)

    def empty_cache(self, batch: int) -> torch.Tensor:
        c = self.cfg
        return torch.zeros(c.n_layers, batch, c.n_heads, 0, c.head_dim)

    def forward(
        self,
        input_ids: torch.Tensor,  # [B, T] int64
        position_ids: torch.Tensor,  # [B, T] int64
        past_keys: torch.Tensor,  # [L, B, H, S, hd]
        past_values: torch.Tensor,  # [L, B, H, S, hd]
        attention_mask: torch.Tensor,  # [B, T, S+T] bool, True where a new token sees a key
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits [B, T, V] and the present cache [L, B, H, S+T, hd] for keys and values."""
        x = self.tok(input_ids) + self.pos(position_ids)
        keys, values = [], []
        for i, block in enumerate(self.blocks):
            x, k, v = block(x, past_keys[i], past_values[i], attention_mask)
            keys.append(k)
            values.append(v)
        logits = self.ln_f(x) @ self.tok.weight.T
        return logits, torch.stack(keys), torch.stack(values)

    def train_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Causal logits [B, T, V] over whole sequences, no cache (training and scoring)."""
        return causal_logits(self, input_ids)


def causal_mask(past: int, new: int) -> torch.Tensor:
    """[1, new, past+new] mask for one sequence whose cache holds ``past`` positions."""
    m = torch.ones(new, past + new, dtype=torch.bool)
    m[:, past:] = torch.ones(new, new, dtype=torch.bool).tril()
    return m[None]


def causal_logits(lm: Any, input_ids: torch.Tensor) -> torch.Tensor:
    """Causal logits [B, T, V] over whole sequences with no cache, for any network with
    ``forward(ids, positions, past_keys, past_values, mask)`` and ``empty_cache(batch)``: the
    dense ``TinyLM`` and the MoE share it."""
    b, t = input_ids.shape
    pos = torch.arange(t).expand(b, t)
    mask = torch.ones(t, t, dtype=torch.bool).tril().expand(b, t, t)
    empty = lm.empty_cache(b)
    return lm.forward(input_ids, pos, empty, empty, mask)[0]
