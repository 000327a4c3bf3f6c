"""Export a Llama-family transformers checkpoint (a directory or a GGUF file) to ONNX with its
KV cache, fp32 and int8, for the torch-free edge runtime in ``models.onnx_lm``.

The graph is a plain-tensor re-statement of the Llama forward pass (RMSNorm, rotary positions,
grouped-query attention, SwiGLU MLP) over the checkpoint's own weights, with the cache in and out:

    input_ids [B, T], position_ids [B, T], past_keys/past_values [L, B, Hkv, S, hd],
    attention_mask [B, T, S+T] bool  ->  logits [B, T, V], new_keys/new_values [L, B, Hkv, T, hd]

Only the new positions' keys and values come out: the runtime keeps the cache and appends them,
so a decode step moves one position per layer rather than the whole cache. The re-statement is
checked against transformers' own forward before export, and the exported graph against it
after, so a numerical slip in either fails the export instead of shipping.

Torch and transformers are needed here (a build machine or the cloud), never on the edge.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.llama_quant import BLOCKWISE, quantize_llama
from models.onnx_lm import (
    CONFIG_NAME,
    INPUT_NAMES,
    OUTPUT_NAMES,
    TOKENIZER_NAME,
    ExportedShape,
    OnnxLlama,
    causal_mask,
)

SUPPORTED = ("llama", "mistral", "qwen2")  # same block layout; qwen2 adds q/k/v biases
DEFAULT_MAX_LEN = 2048  # the runtime's cache grows on demand; this caps what a session may hold
CHECK_ATOL = 2e-3  # logits are O(10): fp32 reorderings stay far below this


class _Block(nn.Module):
    """One decoder layer over the checkpoint's modules (weights shared, not copied)."""

    def __init__(self, layer: nn.Module, n_heads: int, n_kv: int, head_dim: int) -> None:
        super().__init__()
        att, mlp = layer.self_attn, layer.mlp
        self.q, self.k, self.v, self.o = att.q_proj, att.k_proj, att.v_proj, att.o_proj
        self.gate, self.up, self.down = mlp.gate_proj, mlp.up_proj, mlp.down_proj
        self.ln1, self.ln2 = layer.input_layernorm.weight, layer.post_attention_layernorm.weight
        self.n_heads, self.n_kv, self.head_dim = n_heads, n_kv, head_dim

    def forward(
        self,
        x: torch.Tensor,  # [B, T, D]
        cos: torch.Tensor,  # [B, 1, T, hd]
        sin: torch.Tensor,  # [B, 1, T, hd]
        past_k: torch.Tensor,  # [B, Hkv, S, hd]
        past_v: torch.Tensor,  # [B, Hkv, S, hd]
        bias: torch.Tensor,  # [B, 1, 1, T, S+T] 0 where visible, -inf where not
        eps: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, _ = x.shape
        g, hd = self.n_heads // self.n_kv, self.head_dim
        h = _rms(x, self.ln1, eps)
        q = self.q(h).view(b, t, self.n_heads, hd).transpose(1, 2)  # [B, H, T, hd]
        k = self.k(h).view(b, t, self.n_kv, hd).transpose(1, 2)  # [B, Hkv, T, hd]
        v = self.v(h).view(b, t, self.n_kv, hd).transpose(1, 2)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        keys = torch.cat([past_k, k], dim=2)  # [B, Hkv, S+T, hd]
        values = torch.cat([past_v, v], dim=2)
        # Grouped queries share a kv head: [B, Hkv, G, T, hd] against [B, Hkv, 1, S+T, hd].
        qg = q.view(b, self.n_kv, g, t, hd)
        scores = qg @ keys[:, :, None].transpose(-1, -2) / hd**0.5 + bias  # [B, Hkv, G, T, S+T]
        att = torch.softmax(scores, dim=-1) @ values[:, :, None]  # [B, Hkv, G, T, hd]
        x = x + self.o(att.reshape(b, self.n_heads, t, hd).transpose(1, 2).reshape(b, t, -1))
        h = _rms(x, self.ln2, eps)
        x = x + self.down(nn.functional.silu(self.gate(h)) * self.up(h))
        return x, k, v


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding in transformers' half-split layout (GGUF loading restores that layout)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class LlamaGraph(nn.Module):
    """The exported forward pass of a Llama-family ``PreTrainedModel``."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        cfg = model.config
        if cfg.model_type not in SUPPORTED:
            raise ValueError(f"model type {cfg.model_type!r} is not one of {SUPPORTED}")
        # transformers 5 keeps rope settings in rope_parameters, 4.x in rope_scaling/rope_theta.
        rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
        kind = rope.get("rope_type", rope.get("type", "default"))
        if kind != "default":
            raise ValueError(f"rope scaling {kind!r} is not supported by the export")
        n_heads, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads)
        self.n_kv, self.eps = n_kv, float(cfg.rms_norm_eps)
        theta = float(rope.get("rope_theta", 0) or getattr(cfg, "rope_theta", 10000.0))
        steps = torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim
        inv = 1.0 / theta**steps
        self.register_buffer("inv_freq", inv, persistent=False)
        decoder = model.get_decoder()
        self.embed = decoder.embed_tokens.weight  # [V, D]
        self.blocks = nn.ModuleList(_Block(x, n_heads, n_kv, self.head_dim) for x in decoder.layers)
        self.norm = decoder.norm.weight
        # A separate [D, V] head, even when tied: int8 quantization then sees a MatMul against an
        # initializer (a Transpose of the embedding table would stay fp32 and cost 2x).
        head = model.get_output_embeddings().weight.detach()
        self.head = nn.Parameter(head.T.contiguous(), requires_grad=False)

    def forward(
        self,
        input_ids: torch.Tensor,  # [B, T] int64
        position_ids: torch.Tensor,  # [B, T] int64
        past_keys: torch.Tensor,  # [L, B, Hkv, S, hd]
        past_values: torch.Tensor,  # [L, B, Hkv, S, hd]
        attention_mask: torch.Tensor,  # [B, T, S+T] bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits [B, T, V] and the new positions' keys and values [L, B, Hkv, T, hd]."""
        x = nn.functional.embedding(input_ids, self.embed)
        freqs = position_ids[..., None].float() * self.inv_freq  # [B, T, hd/2]
        angles = torch.cat([freqs, freqs], dim=-1)[:, None]  # [B, 1, T, hd]
        cos, sin = angles.cos(), angles.sin()
        bias = torch.where(attention_mask, 0.0, float("-inf"))[:, None, None]
        keys, values = [], []
        for i, block in enumerate(self.blocks):
            x, k, v = block(x, cos, sin, past_keys[i], past_values[i], bias, self.eps)
            keys.append(k)
            values.append(v)
        logits = _rms(x, self.norm, self.eps) @ self.head
        return logits, torch.stack(keys), torch.stack(values)


def shape_of(model: Any, max_len: int) -> ExportedShape:
    """The runtime's view of ``model``: cache geometry, vocabulary width, length cap."""
    cfg = model.config
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    return ExportedShape(
        vocab_size=int(model.get_output_embeddings().weight.shape[0]),
        n_layers=int(cfg.num_hidden_layers),
        n_kv_heads=int(cfg.num_key_value_heads),
        head_dim=head_dim,
        max_len=min(int(getattr(cfg, "max_position_embeddings", 0) or max_len), max_len),
    )


def default_out_dir(source: str | Path) -> Path:
    """Where ``tandem export-onnx hf:SOURCE`` writes: runs/onnx/<checkpoint name>."""
    p = Path(source)
    return Path("runs") / "onnx" / (p.stem if p.suffix == ".gguf" else p.name)


def export_llama(
    source: str | Path,
    out_dir: str | Path | None = None,
    int8: bool = True,
    max_len: int = DEFAULT_MAX_LEN,
    scheme: str = BLOCKWISE,
) -> Path:
    """Export the checkpoint at ``source`` (directory or .gguf) to ``out_dir``.

    Writes model.onnx, tokenizer.json and onnx_lm.json, and with ``int8`` model.int8.onnx by
    ``scheme`` (``models.llama_quant``: blockwise int8 by default, or a scheme of
    ``models.quantize``). Returns the int8 graph's path, or the fp32 one without ``int8``.
    """
    from models.hf_backend import load_hf

    hf, tok = load_hf(source)
    out = Path(out_dir) if out_dir else default_out_dir(source)
    return export_loaded(
        hf, tok, out, default_out_dir(source).name, str(source), int8, max_len, scheme
    )


def export_loaded(
    hf: Any,
    tok: Any,
    out: Path,
    name: str,
    source: str = "",
    int8: bool = True,
    max_len: int = DEFAULT_MAX_LEN,
    scheme: str = BLOCKWISE,
) -> Path:
    """``export_llama`` for a model already loaded (``models.hf_backend.HFLM`` and its
    ``HFTokenizer``), e.g. a layer-skip cut of a checkpoint."""
    out.mkdir(parents=True, exist_ok=True)
    graph = LlamaGraph(hf.model).eval()
    shape = shape_of(hf.model, max_len)
    _check_against_transformers(graph, hf.model, shape)
    tok.tokenizer.backend_tokenizer.save(str(out / TOKENIZER_NAME))
    config: dict[str, Any] = {
        "format": 1,
        "name": name,
        "source": source,
        "model_type": hf.model.config.model_type,
        "shape": asdict(shape),
        "tokenizer": {
            "bos_id": tok.bos_id,
            "eos_id": tok.eos_id,
            "clean_up": bool(getattr(tok.tokenizer, "clean_up_tokenization_spaces", False)),
        },
        "chat_template": getattr(tok.tokenizer, "chat_template", None),
    }
    fp32 = out / "model.onnx"
    _export_graph(graph, shape, fp32)
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    _check_against_graph(graph, fp32, shape)
    if not int8:
        return fp32
    q8 = out / "model.int8.onnx"
    config["int8"] = quantize_llama(fp32, q8, scheme)
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return q8


def _example(shape: ExportedShape, b: int, t: int, s: int) -> tuple[torch.Tensor, ...]:
    """Inputs of batch ``b``, ``t`` new tokens after ``s`` cached ones (random cache)."""
    cache = (shape.n_layers, b, shape.n_kv_heads, s, shape.head_dim)
    return (
        torch.randint(0, shape.vocab_size, (b, t)),
        torch.arange(s, s + t).expand(b, t).contiguous(),
        torch.randn(cache),
        torch.randn(cache),
        torch.from_numpy(causal_mask(s, t)).expand(b, t, s + t).contiguous(),
    )


def _export_graph(graph: LlamaGraph, shape: ExportedShape, path: Path) -> None:
    # Example sizes above 1 so the tracer cannot specialize batch, new or past to a constant.
    example = _example(shape, 2, 3, 4)
    dim = torch.export.Dim
    batch, new, past, total = dim("batch"), dim("new"), dim("past"), dim("total")
    dynamic = {
        "input_ids": {0: batch, 1: new},
        "position_ids": {0: batch, 1: new},
        "past_keys": {1: batch, 3: past},
        "past_values": {1: batch, 3: past},
        "attention_mask": {0: batch, 1: new, 2: total},
    }
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter is chatty about axis renames
        torch.onnx.export(
            graph,
            example,
            str(path),
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=dynamic,
            external_data=False,  # one file per graph: easy to ship to a device
            dynamo=True,
            verbose=False,
        )


def _check_against_transformers(graph: LlamaGraph, model: Any, shape: ExportedShape) -> None:
    """Raise RuntimeError unless the re-stated forward gives transformers' logits, for a prefill
    and for a decode step over the cache the prefill left."""
    ids = torch.tensor([[1, 504, 3458, 282, 4770, 314, 28, 2103]]) % shape.vocab_size
    n = ids.shape[1]
    with torch.no_grad():
        want = model(input_ids=ids).logits[0]
        empty = torch.zeros(shape.n_layers, 1, shape.n_kv_heads, 0, shape.head_dim)
        mask = torch.from_numpy(causal_mask(0, n - 1))
        pre, k, v = graph(ids[:, :-1], torch.arange(n - 1)[None], empty, empty, mask)
        last, _, _ = graph(
            ids[:, -1:], torch.tensor([[n - 1]]), k, v, torch.from_numpy(causal_mask(n - 1, 1))
        )
    got = torch.cat([pre[0], last[0]])
    err = float((got - want).abs().max())
    if err > CHECK_ATOL:
        raise RuntimeError(f"re-stated forward differs from transformers by {err:.2e}")


def _check_against_graph(graph: LlamaGraph, path: Path, shape: ExportedShape) -> None:
    """Raise RuntimeError unless ONNX Runtime matches torch on a real prefill from an empty cache
    and on three more tokens over the cache it left (logits and new keys/values)."""
    lm = OnnxLlama(path)
    ids = (torch.arange(8)[None] * 997 + 17) % shape.vocab_size
    empty = torch.zeros(shape.n_layers, 1, shape.n_kv_heads, 0, shape.head_dim)
    k = v = empty
    for lo, hi in ((0, 5), (5, 8)):
        inputs = (
            ids[:, lo:hi],
            torch.arange(lo, hi)[None],
            k,
            v,
            torch.from_numpy(causal_mask(lo, hi - lo)),
        )
        with torch.no_grad():
            want = graph(*inputs)
        got = lm.run(*(x.numpy() for x in inputs))
        for name, a, b in zip(OUTPUT_NAMES, got, want, strict=True):
            err = float(np.abs(a - b.numpy()).max())
            if err > CHECK_ATOL * max(1.0, float(b.abs().max())):
                raise RuntimeError(f"{path} {name} differs from torch by {err:.2e} (past {lo})")
        k, v = torch.cat([k, want[1]], dim=3), torch.cat([v, want[2]], dim=3)
