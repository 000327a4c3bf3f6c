"""Text-draft sessions: an edge of another tokenizer drafts as text, the cloud re-tokenizes.

Universal assisted decoding on the wire (``models.uad`` is the same algorithm in one process).
An edge whose tokenizer is not the cloud's opens its session with the prompt as text and
``text_drafts`` set; each round then carries the drafted continuation as text. The cloud

1. re-tokenizes that text with its own tokenizer after the tokens it has committed
   (``models.uad.retokenize``: with a window of committed tokens, so a word the draft continues
   merges as the target would split it);
2. verifies the resulting tokens as an ordinary round of its engine (batched with every other
   round, same greedy rule), and
3. answers with everything generated so far as text.

Greedy decoding stays lossless whatever the edge drafts: every committed token is the target's
argmax after the committed tokens before it. Sampled text drafts are refused: the draft
distribution q lives on the edge's vocabulary and p on the cloud's, so the exact test of
``models.speculative.verify`` does not apply.

The sessions' state lives with the verify stream that opened them (a ``TextSessions`` per
stream), beside the engine's own session, and goes with the stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cloud_node.engine import Round, RoundResult
from cloud_node.errors import RequestError
from models.base import Tokenizer
from models.sampling import SamplingParams
from models.speculative import Proposal
from models.uad import retokenize, start_ids, text_after
from tandem_wire.v1 import tandem_pb2 as pb

MAX_DRAFT_CHARS = 4096  # characters of draft text one round may carry
PROMPT_CHARS_PER_TOKEN = 32  # prompt text is capped at this many characters per max_len token

SAMPLED_REFUSAL = (
    "text drafts (a drafter of another tokenizer) are verified greedily only: sampled "
    "verification needs q and p on one vocabulary, and the heterogeneous-vocabulary algorithms "
    "are not implemented; use temperature 0, or a drafter sharing the cloud's tokenizer {theirs}"
)


@dataclass
class TextSession:
    """One text-draft session's tokens, in the cloud's tokenizer."""

    prompt: list[int]
    committed: list[int]  # prompt, then everything generated


class TextSessions:
    """The text-draft sessions of one verify stream."""

    def __init__(
        self,
        tok: Tokenizer | None,
        tokenizer_id: str,
        vocab_size: int,
        max_len: int,
        max_draft: int,
    ) -> None:
        self.tok, self.tokenizer_id = tok, tokenizer_id
        self.vocab_size, self.max_len, self.max_draft = vocab_size, max_len, max_draft
        self.sessions: dict[str, TextSession] = {}

    def wanted(self, o: pb.OpenSession) -> bool:
        """Whether ``o`` opens a text-draft session: the edge offers text drafts and its tokens
        would not mean the same here (another tokenizer, or none stated with no ids sent)."""
        other = bool(o.tokenizer) and bool(self.tokenizer_id) and o.tokenizer != self.tokenizer_id
        return o.text_drafts and (other or not o.prompt)

    def open(self, o: pb.OpenSession, params: SamplingParams) -> list[int]:
        """Check a text-draft open and return the prompt in this cloud's tokens."""
        if self.tok is None:
            raise RequestError("precondition", "text drafts: this cloud node has no tokenizer")
        if not params.greedy:
            raise RequestError("precondition", SAMPLED_REFUSAL.format(theirs=self.tokenizer_id))
        if not o.prompt_text:
            raise RequestError("invalid", "prompt_text: a text-draft session needs the prompt")
        cap = PROMPT_CHARS_PER_TOKEN * self.max_len
        if len(o.prompt_text) > cap:
            raise RequestError(
                "invalid", f"prompt_text: {len(o.prompt_text)} characters exceed {cap}"
            )
        if o.session_id in self.sessions:
            raise RequestError("invalid", f"session {o.session_id!r} is already open")
        try:
            prompt = start_ids(self.tok, o.prompt_text)
        except ValueError as exc:
            raise RequestError("invalid", f"prompt_text: {exc}") from None
        self.sessions[o.session_id] = TextSession(list(prompt), list(prompt))
        return prompt

    def forget(self, session_id: str) -> None:
        """Drop a session (closed, or its open was refused by the engine)."""
        self.sessions.pop(session_id, None)

    def round(self, v: pb.VerifyRequest) -> Round | None:
        """The engine round for a text-draft verify request; None when ``v`` is not one."""
        s = self.sessions.get(v.session_id)
        if s is None:
            return None
        if v.draft or v.q:
            raise RequestError("invalid", "a text-draft session takes draft_text, not draft ids")
        if len(v.draft_text) > MAX_DRAFT_CHARS:
            raise RequestError(
                "invalid", f"draft_text: {len(v.draft_text)} characters exceed {MAX_DRAFT_CHARS}"
            )
        base = int(v.base_position)
        if not 1 <= base <= len(s.committed):
            raise RequestError(
                "invalid",
                f"base_position {base} outside [1, {len(s.committed)}] of session {v.session_id!r}",
            )
        assert self.tok is not None  # a session exists only where open() found a tokenizer
        room = min(self.max_draft, self.max_len - 1 - base)
        cand = retokenize(self.tok, s.committed[:base], v.draft_text)
        cand = [t for t in cand if 0 <= t < self.vocab_size][: max(room, 0)]
        tokens = np.asarray(cand, dtype=np.int64)  # [k], k may be 0: one target token
        return Round(v.session_id, int(v.round_id), base, Proposal(tokens, None))

    def reply(self, rnd: Round, res: RoundResult, eos_id: int | None) -> pb.VerifyReply:
        """Fold the engine's verdict into the session and say it as text."""
        s = self.sessions[rnd.session_id]
        v = res.verdict
        kept = rnd.proposal.tokens[: v.accepted].tolist()
        # from the round's own base, so a retried round id (answered again) changes nothing
        s.committed = [*s.committed[: rnd.base_position], *kept, v.next_token]
        assert self.tok is not None
        return pb.VerifyReply(
            text=text_after(self.tok, s.prompt, s.committed[len(s.prompt) :]),
            drafted=len(rnd.proposal.tokens),
            ended=(eos_id is not None and v.next_token == eos_id)
            or len(s.committed) >= self.max_len - 1,
        )
