"""Text as it streams: incremental decoding and stop sequences."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Tokenizer(Protocol):
    """What incremental decoding needs of a tokenizer (models.base.Tokenizer has it)."""

    def decode(self, ids: Sequence[int]) -> str: ...


class IncrementalText:
    """Turns batches of token ids into the text each batch adds.

    Decoding each batch alone loses what joins them (the task tokenizer puts spaces between
    words, BPE tokenizers merge bytes), so the whole sequence is decoded and the new suffix sent.
    A trailing U+FFFD (a character whose bytes have not all arrived) is held back.
    """

    def __init__(self, tok: Tokenizer) -> None:
        self.tok = tok
        self.ids: list[int] = []
        self.sent = ""

    def add(self, tokens: Sequence[int]) -> str:
        """The text ``tokens`` add to what was returned before."""
        self.ids.extend(int(t) for t in tokens)
        full = self.tok.decode(self.ids)
        if full.endswith("\ufffd"):
            return ""
        if not full.startswith(self.sent):  # a tokenizer that rewrites earlier text: send as is
            delta = self.tok.decode([int(t) for t in tokens])
            self.sent += delta
            return delta
        delta, self.sent = full[len(self.sent) :], full
        return delta


class StopScanner:
    """Finds the first stop sequence in streamed text, holding back what could start one.

    ``feed`` returns the text safe to emit now; once a stop is found, ``stopped`` is set and
    nothing after it is ever returned.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.buffer = ""
        self.stopped: str | None = None  # the stop sequence found

    def feed(self, text: str) -> str:
        """What of ``text`` (after earlier input) can be emitted now."""
        if self.stopped is not None:
            return ""
        self.buffer += text
        hits = [(self.buffer.find(s), s) for s in self.stops if s in self.buffer]
        if hits:
            at, stop = min(hits)
            self.stopped = stop
            out, self.buffer = self.buffer[:at], ""
            return out
        cut = len(self.buffer) - self.hold
        if cut <= 0:
            return ""
        out, self.buffer = self.buffer[:cut], self.buffer[cut:]
        return out

    def flush(self) -> str:
        """What is still held at the end of the stream."""
        out, self.buffer = ("" if self.stopped is not None else self.buffer), ""
        return out
