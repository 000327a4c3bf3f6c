"""Torch-free runtime of an exported real checkpoint: ONNX Runtime for the model, the
``tokenizers`` library for the tokenizer.json saved beside the graph.

An export directory (written by ``models.llama_onnx.export_llama``) holds::

    model.onnx        fp32 graph, KV cache in, the new positions' keys and values out
    model.int8.onnx   its int8 twin (weights only; activations quantized per call)
    tokenizer.json    the checkpoint's tokenizer, loaded without transformers
    onnx_lm.json      shape, special token ids, provenance (``CONFIG_NAME``)

Sessions keep a growing numpy cache [layers, kv heads, capacity, head_dim] and roll back by moving
their length, as every backend of ``models.base`` does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.base import CacheSession, check_feed, extend_each
from models.onnx_backend import inference_session

CONFIG_NAME = "onnx_lm.json"
TOKENIZER_NAME = "tokenizer.json"
INPUT_NAMES = ("input_ids", "position_ids", "past_keys", "past_values", "attention_mask")
OUTPUT_NAMES = ("logits", "new_keys", "new_values")
GROW = 256  # cache capacity grows in steps of this many positions


@dataclass(frozen=True)
class ExportedShape:
    """What the runtime needs to know of an exported model."""

    vocab_size: int  # width of the logits (may exceed the tokenizer's ids)
    n_layers: int  # decoder layers (first axis of the cache)
    n_kv_heads: int  # key/value heads per layer (grouped-query attention)
    head_dim: int  # width of one head
    max_len: int  # longest sequence a session may hold


def causal_mask(past: int, new: int) -> np.ndarray:
    """[1, new, past + new] bool: every cached key, and new keys up to the token itself."""
    m = np.ones((new, past + new), dtype=bool)
    m[:, past:] = np.tri(new, dtype=bool)
    return m[None]


def is_export_dir(path: str | Path) -> bool:
    """Whether ``path`` is a directory written by the real-checkpoint export (or a graph in one)."""
    p = Path(path)
    d = p.parent if p.suffix == ".onnx" else p
    return (d / CONFIG_NAME).is_file()


def read_config(directory: Path) -> dict[str, Any]:
    """The export's ``onnx_lm.json``."""
    return json.loads((directory / CONFIG_NAME).read_text())


class JsonTokenizer:
    """The Tokenizer protocol over a tokenizer.json, as ``models.hf_backend.HFTokenizer`` reads
    the same file through transformers: no special tokens added on encode, dropped on decode.

    ``tokenizer`` is the ``tokenizers.Tokenizer``, so ``models.fingerprint`` hashes the same table
    as on a cloud node holding the checkpoint through transformers.
    """

    def __init__(self, path: Path, bos_id: int, eos_id: int, clean_up: bool = False) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:  # the edge extra needs it beside onnxruntime
            raise ImportError(
                "loading an exported checkpoint's tokenizer.json needs the 'tokenizers' package"
            ) from exc
        self.tokenizer = Tokenizer.from_file(str(path))
        self.bos_id, self.eos_id, self.clean_up = int(bos_id), int(eos_id), clean_up

    @property
    def vocab_size(self) -> int:
        """Ids the tokenizer can produce, added tokens included."""
        return int(self.tokenizer.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``; no BOS/EOS unless asked, callers place them explicitly."""
        return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``, special tokens dropped by default."""
        text = str(self.tokenizer.decode([int(i) for i in ids], skip_special_tokens))
        return _clean_up(text) if self.clean_up else text


def _clean_up(text: str) -> str:
    """transformers' ``clean_up_tokenization`` (spaces before punctuation and contractions)."""
    for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'")):
        text = text.replace(a, b)
    for suffix in ("n't", "'m", "'s", "'ve", "'re"):
        text = text.replace(f" {suffix}", suffix)
    return text


class OnnxLlamaSession(CacheSession):
    """One sequence's cache; grows by ``GROW`` positions when full, truncates by its length."""

    lm: OnnxLlama

    def __init__(self, lm: OnnxLlama) -> None:
        c = lm.shape
        self.lm = lm
        self.keys = np.zeros((c.n_layers, c.n_kv_heads, 0, c.head_dim), dtype=np.float32)
        self.values = np.zeros_like(self.keys)
        self._length = 0

    def extend(self, tokens: Sequence[int]) -> np.ndarray:
        """Feed ``tokens``; float32 logits [len(tokens), vocab]."""
        check_feed(self.lm, [self], [tokens])
        return self.lm.extend_one(self, tokens)

    def reserve(self, n: int) -> None:
        """Make room for ``n`` more positions."""
        need, cap = self._length + n, self.keys.shape[2]
        if need <= cap:
            return
        new_cap = min(max(need, cap + GROW), self.lm.max_len)
        grow = ((0, 0), (0, 0), (0, new_cap - cap), (0, 0))
        self.keys = np.pad(self.keys, grow)
        self.values = np.pad(self.values, grow)


class OnnxLlama:
    """An exported Llama-family checkpoint served by ONNX Runtime through the model protocol."""

    def __init__(self, path: str | Path, name: str | None = None, threads: int = 1) -> None:
        path = Path(path)
        raw = read_config(path.parent)
        self.path = path
        self.config = raw
        self.shape = ExportedShape(**raw["shape"])
        self.name = name or f"{raw.get('name', path.parent.name)}-{path.stem.replace('.', '-')}"
        self.vocab_size = self.shape.vocab_size
        self.max_len = self.shape.max_len
        self.ort = inference_session(path, threads)

    def session(self) -> OnnxLlamaSession:
        """A fresh, empty session."""
        return OnnxLlamaSession(self)

    def run(
        self, ids: np.ndarray, pos: np.ndarray, pk: np.ndarray, pv: np.ndarray, mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One graph call; arrays as in ``INPUT_NAMES``, results as in ``OUTPUT_NAMES``."""
        feed = dict(zip(INPUT_NAMES, (ids, pos, pk, pv, mask), strict=True))
        logits, keys, values = self.ort.run(list(OUTPUT_NAMES), feed)
        return logits, keys, values

    def extend_batch(
        self, sessions: Sequence[OnnxLlamaSession], tokens: Sequence[Sequence[int]]
    ) -> list[np.ndarray]:
        """A loop over sessions: the edge drafts one sequence at a time."""
        return extend_each(sessions, tokens)

    def extend_one(self, s: OnnxLlamaSession, tokens: Sequence[int]) -> np.ndarray:
        """Feed ``tokens`` to ``s``; float32 logits [len(tokens), vocab]."""
        n, past = len(tokens), s.length
        s.reserve(n)
        ids = np.asarray([list(tokens)], dtype=np.int64)
        pos = np.arange(past, past + n, dtype=np.int64)[None]
        # The cache prefix is strided inside the larger buffer; ORT wants contiguous inputs.
        pk = np.ascontiguousarray(s.keys[:, None, :, :past])
        pv = np.ascontiguousarray(s.values[:, None, :, :past])
        logits, k, v = self.run(ids, pos, pk, pv, causal_mask(past, n))
        s.keys[:, :, past : past + n] = k[:, 0]
        s.values[:, :, past : past + n] = v[:, 0]
        s._length = past + n
        return logits[0].astype(np.float32, copy=False)


def load_export(
    path: str | Path, int8: bool = True, threads: int = 1
) -> tuple[OnnxLlama, JsonTokenizer]:
    """An export directory (its int8 graph, or fp32 with ``int8=False``) or one of its .onnx
    files, as (model, tokenizer)."""
    p = Path(path)
    if p.suffix == ".onnx":
        graph, d = p, p.parent
    else:
        d = p
        graph = d / ("model.int8.onnx" if int8 else "model.onnx")
    if not (d / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {d}: not a `tandem export-onnx` directory")
    if not graph.is_file():
        raise FileNotFoundError(f"{graph} does not exist; run `tandem export-onnx` again")
    raw = read_config(d)
    tok = raw["tokenizer"]
    tokenizer = JsonTokenizer(
        d / TOKENIZER_NAME, tok["bos_id"], tok["eos_id"], bool(tok.get("clean_up", False))
    )
    return OnnxLlama(graph, threads=threads), tokenizer
