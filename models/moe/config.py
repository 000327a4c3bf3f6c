"""The shape of the bundled MoE target, and the names of expert tensors in real layouts."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class MoEConfig:
    """Shape of the bundled MoE model (attention as in TinyLM, a sparse SwiGLU MoE per block)."""

    vocab_size: int  # number of token ids
    d_model: int = 128  # width of the residual stream
    n_layers: int = 4  # transformer blocks, each with one MoE layer
    n_heads: int = 4  # attention heads per block
    n_experts: int = 8  # experts per MoE layer
    top_k: int = 2  # experts each token is routed to
    d_expert: int = 64  # hidden width of one expert (SwiGLU)
    max_len: int = 64  # longest sequence (learned position embeddings)
    arch: str = "tandem-moe"  # marks the checkpoint as this architecture

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> MoEConfig:
        return cls(**json.loads(path.read_text()))
