"""Universal assisted decoding: a drafter of another tokenizer drafts for a target, as text.

The drafter never sees the target's token ids and the target never sees the drafter's: what
crosses between them is text. Each round

1. the drafter (``TextDrafter``, the edge side) tokenizes the text committed so far with its own
   tokenizer, rolls its cache back to the longest prefix it already holds, drafts ``k`` tokens
   greedily and hands back their text;
2. the target (``TextVerifier``, the cloud side) re-tokenizes that text with its own tokenizer,
   verifies the resulting tokens in one pass with the same greedy rule as same-tokenizer
   speculation (``models.speculative.greedy_verdicts``), commits the accepted tokens and its own
   next token, and hands back the committed text.

Greedy decoding stays lossless whatever the drafter says: every committed token is the target's
argmax given the committed tokens before it, so the output is the target's greedy output token for
token. A bad re-tokenization (a draft that splits a word where the target would not, text the
target cannot encode) only lowers acceptance. This follows transformers' universal assisted
decoding (re-tokenize the draft with a window of committed context so the boundary token merges as
it would have). Sampling is refused: across vocabularies ``q`` and ``p`` live on different token
sets, and the exact test of ``models.speculative.verify`` does not apply (the published
heterogeneous-vocabulary algorithms are not implemented here).

Torch-free: any ``CausalLM`` and ``Tokenizer`` (ONNX, torch, transformers) on either side.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from models.base import CausalLM, LMSession, Tokenizer
from models.sampling import SamplingParams
from models.speculative import greedy_verdicts

WINDOWS = (4, 2, 1)  # committed target tokens re-tokenized with a draft, tried in this order


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def text_after(tok: Tokenizer, prefix: Sequence[int], ids: Sequence[int]) -> str:
    """The text ``ids`` add after ``prefix``: decode(prefix + ids) minus decode(prefix) when the
    one extends the other (byte-level tokenizers merge across the boundary), else decode(ids)."""
    whole, head = tok.decode([*prefix, *ids]), tok.decode(list(prefix))
    return whole[len(head) :] if whole.startswith(head) else tok.decode(list(ids))


def start_ids(tok: Tokenizer, text: str) -> list[int]:
    """``text`` as a sequence start: with the specials the tokenizer's own rules add (Gemma's
    BOS; none for SmolLM2), or BOS first for tokenizers without such rules (the bundled ones)."""
    try:
        return list(tok.encode(text, add_special_tokens=True))  # type: ignore[call-arg]
    except TypeError:
        return [tok.bos_id, *tok.encode(text)]


def retokenize(tok: Tokenizer, committed: Sequence[int], draft: str) -> list[int]:
    """``tok``'s tokens for ``draft`` continuing the ``committed`` tokens.

    Tries the draft together with the last few committed tokens' text, so a token that the
    draft continues merges as the target would tokenize it, and keeps the result only if it
    starts with exactly those committed tokens; else the draft alone. Text the tokenizer cannot
    encode gives no tokens (the round then decodes one target token).
    """
    try:
        for w in WINDOWS:
            tail = list(committed[-w:])
            if len(tail) < w:
                continue
            enc = tok.encode(tok.decode(tail) + draft)
            if enc[:w] == tail and len(enc) > w:
                return enc[w:]
        return tok.encode(draft)
    except ValueError:  # e.g. a word-level tokenizer meeting an unknown word
        return []


class TextDrafter:
    """The edge side: drafts text with its own model and tokenizer, over a cache it reuses."""

    def __init__(
        self,
        lm: CausalLM,
        tok: Tokenizer,
        prefix: Sequence[int] = (),
        max_context: int | None = None,
    ) -> None:
        self.lm, self.tok = lm, tok
        self.prefix = list(prefix)  # ids before the context's (a BOS for models trained with one)
        self.session: LMSession = lm.session()
        self.cached: list[int] = []  # the ids the session holds, in order
        self.max_context = max_context or lm.max_len

    def draft(self, context: str, k: int) -> str:
        """Up to ``k`` tokens' worth of text continuing ``context``, greedily; '' if none."""
        try:
            ids = self.prefix + self.tok.encode(context)
        except ValueError:  # text this tokenizer cannot encode: no draft this round
            return ""
        if not ids:
            ids = [self.tok.bos_id]
        if len(ids) + k > self.max_context:
            return ""  # no room: the target decodes this round alone
        keep = min(common_prefix(self.cached, ids), len(ids) - 1)
        self.session.truncate(keep)
        self.cached = self.cached[:keep]
        logits = self.session.extend(ids[keep:])[-1]
        self.cached = list(ids)
        drafted: list[int] = []
        for i in range(k):
            t = int(np.argmax(logits))
            if t == self.tok.eos_id or t >= self.tok.vocab_size:  # padded logits have no text
                break
            drafted.append(t)
            if i + 1 < k:
                logits = self.session.extend([t])[-1]
                self.cached.append(t)
        return text_after(self.tok, ids, drafted) if drafted else ""


@dataclass
class TextVerdict:
    """What one verify round did, in the target's tokens, and the text committed so far."""

    drafted: int  # target tokens the draft text re-tokenized to (and was verified as)
    accepted: int  # of those, how many the target kept
    tokens: list[int]  # target tokens this round committed (accepted drafts + one)
    text: str  # everything generated so far, as text
    done: bool  # EOS, the token cap or the model's length ended the generation


class TextVerifier:
    """The cloud side: re-tokenizes draft text and verifies it against the target, greedily.

    The session holds every committed token but the last, whose logits the next round needs.
    """

    def __init__(
        self, lm: CausalLM, tok: Tokenizer, prompt: Sequence[int], max_new: int, k_max: int = 16
    ) -> None:
        if not prompt:
            raise ValueError("prompt: needs at least one token")
        self.lm, self.tok = lm, tok
        self.prompt = list(prompt)
        self.ids = list(prompt)
        self.max_new, self.k_max = max_new, k_max
        self.session = lm.session()
        if len(prompt) > 1:
            self.session.extend(self.prompt[:-1])
        self.done = False

    @property
    def generated(self) -> list[int]:
        """Target tokens generated so far."""
        return self.ids[len(self.prompt) :]

    def retokenize(self, draft: str) -> list[int]:
        """The target's tokens for ``draft`` after the committed ones (``retokenize``)."""
        return retokenize(self.tok, self.ids, draft)

    def verify(self, draft: str) -> TextVerdict:
        """One round: re-tokenize ``draft``, verify it, commit, and report."""
        if self.done:
            raise ValueError("verify after the generation ended")
        room = min(
            self.max_new - len(self.generated) - 1,
            self.lm.max_len - len(self.ids) - 1,
            self.k_max,
        )
        cand = [t for t in self.retokenize(draft) if 0 <= t < self.lm.vocab_size][: max(room, 0)]
        base = len(self.ids) - 1
        logits = self.session.extend([self.ids[-1], *cand])  # [1 + len(cand), V]
        v = greedy_verdicts([np.asarray(cand, dtype=np.int64)], [logits])[0]
        new = [*cand[: v.accepted], v.next_token]
        self.session.truncate(base + 1 + v.accepted)
        self.ids.extend(new)
        self.done = (
            v.next_token == self.tok.eos_id
            or len(self.generated) >= self.max_new
            or len(self.ids) >= self.lm.max_len
        )
        text = text_after(self.tok, self.prompt, self.generated)
        return TextVerdict(len(cand), v.accepted, new, text, self.done)


@dataclass
class UADResult:
    """A generation by universal assisted decoding and its account."""

    tokens: list[int]  # the target's tokens after the prompt
    text: str  # their text
    rounds: int = 0  # verify rounds
    drafted: int = 0  # target tokens verified as drafts
    accepted: int = 0  # of those, kept
    draft_s: float = 0.0  # time in the drafter
    verify_s: float = 0.0  # time in the target
    per_round: list[int] = field(default_factory=list)  # accepted drafts of each round

    @property
    def acceptance(self) -> float:
        """accepted / drafted (models.metrics' definition), 0 when nothing was drafted."""
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """1 + accepted / rounds: target tokens per verify pass."""
        return 1 + self.accepted / self.rounds if self.rounds else 0.0


def uad_generate(
    target: CausalLM,
    target_tok: Tokenizer,
    drafter: CausalLM,
    drafter_tok: Tokenizer,
    prompt_text: str,
    prompt_ids: Sequence[int],
    max_new: int,
    k: int = 4,
    params: SamplingParams | None = None,
    drafter_prefix: Sequence[int] = (),
) -> UADResult:
    """Generate after ``prompt_ids`` (the target's tokens of ``prompt_text``) with ``drafter``
    drafting as text; the output equals the target's greedy output. ``drafter_prefix`` goes
    before the drafter's tokens of the text (its BOS, for models trained with one).

    Raises ValueError for sampled decoding, which this algorithm cannot keep lossless.
    """
    if params is not None and not params.greedy:
        raise ValueError(
            "universal assisted decoding across tokenizers is lossless for greedy decoding only; "
            "sampling needs a heterogeneous-vocabulary verification that is not implemented: "
            "use temperature 0, or a drafter that shares the target's tokenizer"
        )
    edge = TextDrafter(drafter, drafter_tok, drafter_prefix)
    cloud = TextVerifier(target, target_tok, prompt_ids, max_new, k_max=4 * k)
    out = UADResult([], "")
    while not cloud.done:
        t0 = time.perf_counter()
        draft = edge.draft(prompt_text + out.text, k)
        t1 = time.perf_counter()
        verdict = cloud.verify(draft)
        out.draft_s += t1 - t0
        out.verify_s += time.perf_counter() - t1
        out.rounds += 1
        out.drafted += verdict.drafted
        out.accepted += verdict.accepted
        out.per_round.append(verdict.accepted)
        out.text = verdict.text
    out.tokens = cloud.generated
    return out
