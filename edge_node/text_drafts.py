"""The edge's side of a text-draft session: drafts cross as text to a cloud of another tokenizer.

Universal assisted decoding over the verify stream (``cloud_node.text_drafts`` is the cloud's
side, ``models.uad`` the algorithm in one process). Each round the drafter tokenizes what is
committed (the session's start in this edge's tokens, then the text the cloud has generated),
drafts k tokens greedily and sends their text; the cloud re-tokenizes and verifies it and answers
with everything generated so far as text. Greedy only: the cloud refuses sampled text drafts.

The reply is the cloud's text. It streams in this edge's tokens, holding back the last one until
the text after it is known (a byte-level tokenizer may merge it with what follows); if the final
text still re-tokenizes differently from what was streamed, the reply is replaced by the final
text's tokens and the event is logged.
"""

from __future__ import annotations

import itertools
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from functools import partial
from typing import Protocol, TypeVar

from edge_node.spec_types import Account, SpecSettings
from edge_node.verdicts import text_fault
from models.base import CausalLM, Tokenizer
from models.uad import TextDrafter
from node_runtime.errors import Precondition
from node_runtime.serving import log_event
from tandem_wire.v1 import tandem_pb2 as pb

log = logging.getLogger("tandem.edge")
T = TypeVar("T")


class Committer(Protocol):
    """What a text session needs of the request it serves (``speculation._Req``)."""

    committed: list[int]
    settings: SpecSettings
    acc: Account
    stopped: bool

    def commit(self, tokens: list[int]) -> None: ...

    def left(self) -> int: ...


class TextSession:
    """Runs the rounds of one text-draft session for one request."""

    def __init__(
        self,
        lm: CausalLM,
        tok: Tokenizer,
        compute: Callable[[Callable[[], T]], Awaitable[T]],
        exchange: Callable[[pb.SpecRequest], Awaitable[pb.SpecReply]],
    ) -> None:
        self.lm, self.tok = lm, tok
        self.compute = compute  # runs a drafter call on the drafter thread
        self.exchange = exchange  # one request on the stream, and its checked reply

    async def run(self, r: Committer, sid: str, position: int, k_cap: int) -> None:
        """Rounds until the cloud ends the sequence, the request's budget (counted in the
        cloud's tokens, as cloud-only's is) runs out or a stop token ends it; then the request
        is complete (``r.stopped``)."""
        start = list(r.committed)  # where the session began, in this edge's tokens
        budget = r.left()  # tokens the cloud may still generate
        # from here the budget counts the cloud's tokens (as cloud-only's does): the reply's
        # length in this edge's tokens may differ and must not cut it
        r.settings = replace(r.settings, max_new=sys.maxsize)
        drafter = TextDrafter(self.lm, self.tok, prefix=start)
        text, streamed, generated, base = "", 0, 0, position
        for rid in itertools.count(1):
            room = min(budget - generated, self.lm.max_len - 1 - len(r.committed))
            k = max(0, min(k_cap, room - 1))
            t0 = time.perf_counter()
            draft = await self.compute(partial(drafter.draft, text, k)) if k else ""
            r.acc.edge_model_s += time.perf_counter() - t0
            req = pb.VerifyRequest(
                session_id=sid, round_id=rid, base_position=base, draft_text=draft
            )
            v = await self.exchange(pb.SpecRequest(verify=req))
            fault = text_fault(v.verdict, sid, rid, base)
            if fault is not None:
                raise ConnectionError(f"bad verdict: {fault}")
            text, base = v.verdict.text, v.verdict.position
            generated += v.verdict.accepted + 1
            self._count(r.acc, v.verdict)
            done = v.verdict.ended or generated >= budget
            if streamed >= 0:  # once streaming diverged, the reply waits for the final text
                streamed = self._stream(r, start, text, streamed, final=done)
            if done or r.stopped:
                break
        if streamed < 0 or not r.stopped:
            self._finish(r, start, text)
        r.stopped = True  # the cloud wrote the whole reply; its length in our tokens differs

    def _ids(self, text: str) -> list[int]:
        try:
            return list(self.tok.encode(text))
        except ValueError as exc:
            msg = f"text drafts: this edge's tokenizer cannot encode the reply: {exc}"
            raise Precondition(msg) from None

    def _stream(self, r: Committer, start: list[int], text: str, streamed: int, final: bool) -> int:
        """Commit the tokens of ``text`` that are settled (all but the last, unless ``final``)
        beyond the ``streamed`` ones; the new count, or -1 when the text re-tokenized
        differently from what was streamed."""
        ids = self._ids(text)
        settled = ids if final else ids[:-1]
        mine = r.committed[len(start) :]
        if settled[: len(mine)] != mine:
            return -1
        if len(settled) > len(mine):
            r.commit(settled[len(mine) :])
        return len(r.committed) - len(start)

    def _finish(self, r: Committer, start: list[int], text: str) -> None:
        """The reply as the final text's tokens, replacing what was streamed if it differs."""
        ids = self._ids(text)
        mine = r.committed[len(start) :]
        if ids[: len(mine)] != mine:
            log_event(log, "text_drafts_restreamed", logging.WARNING, streamed=len(mine))
            del r.committed[len(start) :]
            r.stopped = False
            mine = []
        if len(ids) > len(mine) and not r.stopped:
            r.commit(ids[len(mine) :])

    @staticmethod
    def _count(acc: Account, v: pb.VerifyReply) -> None:
        acc.ttft_s = acc.ttft_s or time.perf_counter() - acc.started
        acc.verify_rounds += 1
        acc.drafted_tokens += v.drafted
        acc.accepted_tokens += v.accepted
        acc.full_rounds += int(v.drafted > 0 and v.accepted == v.drafted)
        acc.cloud_model_cpu_s += v.model_cpu_s
        acc.k_history.append(v.drafted)


def offer_text_drafts(msg: pb.OpenSession, tok: Tokenizer | None, greedy: bool) -> None:
    """Offer text drafts in ``msg`` (greedy requests on an edge with a tokenizer): a cloud of
    another tokenizer then opens a text-draft session from the prompt's text."""
    if tok is not None and greedy:
        msg.text_drafts = True
        msg.prompt_text = tok.decode(list(msg.prompt))
