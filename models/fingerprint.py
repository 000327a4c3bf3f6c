"""A tokenizer's fingerprint: a short stable hash of what its token ids mean.

Token ids mean the same on two nodes only when both map every id to the same token and agree on
the special ids; then, and only then, drafts and verdicts may travel as ids. The fingerprint hashes
exactly that (the id -> token table and the BOS/EOS/PAD ids), so two loads of one tokenizer, on
any machine, give the same string, and tokenizers of different families give different ones.
Torch-free and transformers-free: it reads the tokenizer through duck typing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from models.base import Tokenizer

DIGEST_CHARS = 16  # hex characters of sha256 kept: 64 bits, ample for telling tokenizers apart


def vocabulary(tok: Tokenizer) -> list[str]:
    """Every id's token string, in id order.

    The bundled task tokenizer lists its words (``vocab``); a transformers tokenizer (wrapped in
    ``models.hf_backend.HFTokenizer``) gives its table, added tokens included; any other one is
    read through ``decode`` one id at a time.
    """
    words = getattr(tok, "vocab", None)
    if isinstance(words, Sequence) and all(isinstance(w, str) for w in words):
        return list(words)
    inner: Any = getattr(tok, "tokenizer", None)
    if inner is not None and hasattr(inner, "get_vocab"):
        table: dict[str, int] = inner.get_vocab()
        out = [""] * tok.vocab_size
        for token, i in table.items():
            if 0 <= i < len(out):
                out[i] = token
        return out
    return [tok.decode([i]) for i in range(tok.vocab_size)]


def fingerprint(tok: Tokenizer) -> str:
    """``<vocab size>-<16 hex digits>``: equal for tokenizers whose ids mean the same."""
    words = vocabulary(tok)
    specials = {
        "bos": getattr(tok, "bos_id", None),
        "eos": getattr(tok, "eos_id", None),
        "pad": getattr(tok, "pad_id", None),
    }
    blob = json.dumps({"vocab": words, "special": specials}, ensure_ascii=False)
    digest = hashlib.sha256(blob.encode("utf-8")).hexdigest()[:DIGEST_CHARS]
    return f"{len(words)}-{digest}"
