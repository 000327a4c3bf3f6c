"""The one model protocol every backend serves (torch, ONNX Runtime, transformers).

A model hands out sessions; a session owns a KV cache over the tokens fed so far and can be
truncated to any earlier position, which is how speculation rolls back rejected drafts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Tokenizer(Protocol):
    """Text <-> token ids."""

    eos_id: int
    bos_id: int

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class LMSession(Protocol):
    """One sequence's KV cache in a model."""

    @property
    def length(self) -> int:
        """How many tokens the cache holds."""
        ...

    def extend(self, tokens: Sequence[int]) -> np.ndarray:
        """Feed ``tokens``; return float32 logits [len(tokens), vocab], one row per fed token."""
        ...

    def truncate(self, length: int) -> None:
        """Drop cached positions at and after ``length`` (0 <= length <= self.length)."""
        ...


class CausalLM(Protocol):
    """A decoder-only language model with a truncatable KV cache."""

    name: str
    vocab_size: int
    max_len: int

    def session(self) -> LMSession:
        """A fresh, empty session."""
        ...

    def extend_batch(
        self, sessions: Sequence[LMSession], tokens: Sequence[Sequence[int]]
    ) -> list[np.ndarray]:
        """Extend several sessions in one pass where the backend can; same result as a loop."""
        ...


class CacheSession:
    """Shared part of sessions over a preallocated cache: a length, and truncation that moves it.

    Subclasses hold the cache arrays and ``lm``, whose ``extend_batch`` fills them.
    """

    lm: CausalLM
    _length: int = 0

    @property
    def length(self) -> int:
        """How many tokens the cache holds."""
        return self._length

    def extend(self, tokens: Sequence[int]) -> np.ndarray:
        """Feed ``tokens``; float32 logits [len(tokens), vocab]."""
        return self.lm.extend_batch([self], [tokens])[0]  # type: ignore[list-item]

    def truncate(self, length: int) -> None:
        """Forget positions at and after ``length``; later extends overwrite them."""
        if not 0 <= length <= self._length:
            raise ValueError(f"cannot truncate a cache of {self._length} to {length}")
        self._length = length


def extend_each(sessions: Sequence[LMSession], tokens: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """``extend_batch`` for backends without a batched kernel."""
    return [s.extend(t) for s, t in zip(sessions, tokens, strict=True)]


def check_feed(
    lm: CausalLM, sessions: Sequence[LMSession], tokens: Sequence[Sequence[int]]
) -> None:
    """Raise ValueError for a feed ``lm.extend_batch`` cannot take: foreign sessions, empty or
    out-of-vocabulary feeds, or sequences past the model's context."""
    for s, t in zip(sessions, tokens, strict=True):
        if getattr(s, "lm", lm) is not lm:
            raise ValueError("session belongs to another model")
        check_tokens(t, lm.vocab_size)
        if not t:
            raise ValueError("extend needs at least one token")
        if s.length + len(t) > lm.max_len:
            raise ValueError(f"sequence of {s.length + len(t)} exceeds max_len {lm.max_len}")


def check_tokens(tokens: Sequence[int], vocab_size: int) -> None:
    """Raise ValueError naming the first token id outside [0, vocab_size)."""
    for t in tokens:
        if not 0 <= int(t) < vocab_size:
            raise ValueError(f"token id {int(t)} outside the vocabulary of {vocab_size}")
