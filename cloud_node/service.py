"""The Cloud gRPC servicer: converts wire messages, calls the engine, converts back.

Every refusal is a status with a message naming the field or the limit (``CODES``); what the
servicer does not catch, the server's interceptor maps (a model failure is INTERNAL with an id).

A client, for the per-client shares of sessions and generations, is the ``tandem-client-id``
metadata value when the caller sends one (an edge's node id), else the connection's peer address
with its port: edges that share a host, each with its own channel, count as distinct clients.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any, NoReturn, Protocol

import grpc
import numpy as np

from cloud_node.engine import EngineConfig, EngineStats, Round, RoundResult
from cloud_node.errors import Kind, RequestError
from cloud_node.generation import Generated
from cloud_node.steps import StepService, Walk
from cloud_node.text_drafts import TextSessions
from models.base import Tokenizer
from models.fingerprint import fingerprint
from models.reasoning.proposer import StepDraft
from models.sampling import SamplingParams
from models.speculative import Proposal
from models.uad import start_ids
from node_runtime.emulation import emulation_values
from node_runtime.serving import CLIENT_ID_KEY, log_event
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

log = logging.getLogger("tandem.cloud")

CODES: dict[Kind, grpc.StatusCode] = {
    "invalid": grpc.StatusCode.INVALID_ARGUMENT,
    "not_found": grpc.StatusCode.NOT_FOUND,
    "exists": grpc.StatusCode.ALREADY_EXISTS,
    "exhausted": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
    "precondition": grpc.StatusCode.FAILED_PRECONDITION,
}
_MAX_CLIENT_ID = 128  # characters of a client id at the most
_SUM_TOLERANCE = 1e-3  # how far a q row's probabilities may sum from 1 (float32 on the wire)


def client_of(context: grpc.aio.ServicerContext) -> str:
    """Who the caller is, for per-client shares (see the module docstring)."""
    for key, value in context.invocation_metadata() or ():
        if key == CLIENT_ID_KEY and isinstance(value, str) and 0 < len(value) <= _MAX_CLIENT_ID:
            return f"id:{value}"
    return context.peer() or "unknown"


def sampling_from_wire(s: pb.Sampling) -> SamplingParams:
    """Wire sampling settings -> SamplingParams, INVALID_ARGUMENT-ready errors."""
    try:
        return SamplingParams(float(s.temperature), float(s.top_p) or 1.0, int(s.seed))
    except ValueError as exc:
        raise RequestError("invalid", f"sampling: {exc}") from None


def round_from_wire(v: pb.VerifyRequest, vocab_size: int, max_draft: int) -> Round:
    """A VerifyRequest as a domain Round; q rebuilt dense from its sparse form.

    Sizes are checked before any work, so a request carrying far more drafts or ids than a
    round may hold costs the node nothing but this check.
    """
    k = len(v.draft)
    if not 1 <= k <= max_draft:
        raise RequestError("invalid", f"draft length {k} outside [1, {max_draft}]")
    if len(v.q) not in (0, k):
        raise RequestError("invalid", f"q: {len(v.q)} distributions for {k} drafts")
    tokens = np.asarray(v.draft, dtype=np.int64)  # [k]
    q = _dense_q(v.q, tokens, vocab_size) if len(v.q) else None
    return Round(v.session_id, int(v.round_id), int(v.base_position), Proposal(tokens, q))


def _dense_q(rows: Sequence[pb.DraftDist], tokens: np.ndarray, vocab: int) -> np.ndarray:
    """The checked [k, V] draft distributions of sparse rows (k already bounded)."""
    for i, d in enumerate(rows):  # sizes first: at most max_draft rows
        if len(d.ids) != len(d.probs) or not 1 <= len(d.ids) <= vocab:
            raise RequestError(
                "invalid", f"q[{i}]: ids and probs must be of one size, 1 to {vocab} entries"
            )
    k = len(rows)
    row = np.repeat(np.arange(k), [len(d.ids) for d in rows])  # [n] row of each entry
    ids = np.concatenate([np.asarray(d.ids, dtype=np.int64) for d in rows])  # [n]
    ps = np.concatenate([np.asarray(d.probs, dtype=np.float64) for d in rows])  # [n]
    bad = np.flatnonzero((ids < 0) | (ids >= vocab))
    if len(bad):
        j = bad[0]
        raise RequestError("invalid", f"q[{row[j]}]: token id {ids[j]} outside [0, {vocab})")
    bad = np.flatnonzero(~np.isfinite(ps) | (ps < 0) | (ps > 1))
    if len(bad):
        raise RequestError("invalid", f"q[{row[bad[0]]}]: probs must be finite and in [0, 1]")
    key = np.sort(row * vocab + ids)  # equal neighbours: one id twice in a row
    dup = np.flatnonzero(key[1:] == key[:-1])
    if len(dup):
        i, x = divmod(int(key[dup[0]]), vocab)
        raise RequestError("invalid", f"q[{i}]: token id {x} appears twice")
    sums = np.bincount(row, weights=ps, minlength=k)  # [k]
    bad = np.flatnonzero(np.abs(sums - 1.0) > _SUM_TOLERANCE)
    if len(bad):
        raise RequestError("invalid", f"q[{bad[0]}]: probs sum to {sums[bad[0]]:.6g}, not 1")
    q = np.zeros((k, vocab))
    q[row, ids] = ps
    known = np.flatnonzero((tokens >= 0) & (tokens < vocab))  # the engine names the others
    zero = known[q[known, tokens[known]] <= 0]
    if len(zero):
        i = zero[0]
        raise RequestError("invalid", f"q[{i}]: draft token {tokens[i]} has q = 0")
    return q


def step_to_wire(d: StepDraft) -> pb.StepDraftMsg:
    return pb.StepDraftMsg(text=d.text, tokens=d.tokens, complete=d.complete, ended=d.ended)


def walk_to_wire(w: Walk) -> pb.ScoreReply:
    reply = pb.ScoreReply(
        items=[pb.StepScores(scores=w.scores)],
        model_ms=w.ms,
        batch_size=w.batch,
        confirmed_steps=w.confirmed,
    )
    if w.rewrite is not None:
        r = w.rewrite
        reply.rewrite_index = r.index
        reply.rewrite.CopyFrom(
            pb.StepReply(step=step_to_wire(r.step), model_ms=r.ms, draft_accepted=r.draft_kept)
        )
    return reply


def verdict_to_wire(r: RoundResult) -> pb.SpecReply:
    return pb.SpecReply(
        verdict=pb.VerifyReply(
            session_id=r.session_id,
            round_id=r.round_id,
            base_position=r.base_position,
            accepted=r.verdict.accepted,
            next_token=r.verdict.next_token,
            position=r.position,
            model_ms=r.model_ms,
            model_cpu_s=r.model_cpu_s,
            batch_size=r.batch_size,
        )
    )


class CloudEngine(Protocol):
    """What the servicer uses of an engine: ``cloud_node.engine.VerifyEngine`` (the node's own
    loop) or ``cloud_node.vllm_engine.VllmEngine`` (vLLM in process)."""

    config: EngineConfig
    stats: EngineStats
    lm: Any  # the served model: vocab_size, max_len, name

    def open(
        self,
        session_id: str,
        prompt: Sequence[int],
        params: SamplingParams,
        *,
        owner: object | None = None,
        client: str = "",
    ) -> int: ...

    def close(self, session_id: str, owner: object | None = None) -> bool: ...

    def close_owned(self, owner: object) -> int: ...

    async def submit(self, r: Round, owner: object | None = None) -> RoundResult: ...

    async def generate(
        self,
        prompt: Sequence[int],
        params: SamplingParams,
        max_new: int,
        eos_id: int | None,
        client: str = "",
    ) -> Generated: ...

    def metrics(self) -> dict[str, float]: ...


class CloudServicer(pb_grpc.CloudServicer):
    """Speculate (bidirectional verify stream), Generate (cloud-only), Metrics."""

    def __init__(
        self,
        engine: CloudEngine,
        node_id: str,
        eos_id: int | None,
        steps: StepService | None = None,
        tokenizer: Tokenizer | None = None,
    ) -> None:
        self.engine = engine
        self.node_id = node_id
        self.eos_id = eos_id
        self.steps = steps
        self.tok = tokenizer  # for text prompts (cloud-only from an edge of another tokenizer)
        self.tokenizer_id = fingerprint(tokenizer) if tokenizer is not None else ""

    def _same_tokenizer(self, theirs: str) -> None:
        """Refuse token ids of another tokenizer (FAILED_PRECONDITION naming both)."""
        if theirs and self.tokenizer_id and theirs != self.tokenizer_id:
            raise RequestError(
                "precondition",
                f"tokenizer: the edge's {theirs} is not this cloud's {self.tokenizer_id}; token "
                "speculation needs one tokenizer on both ends, except greedy requests, whose "
                "drafts may travel as text (cloud-only and steps carry text)",
            )

    def _generate_prompt(self, r: pb.GenerateRequest) -> list[int]:
        """The prompt ids to generate from: the ids when they are this cloud's, else the text's."""
        ids_fit = r.tokenizer in ("", self.tokenizer_id) or not self.tokenizer_id
        if r.prompt and (ids_fit or not r.prompt_text):
            self._same_tokenizer(r.tokenizer)
            return list(r.prompt)
        if not r.prompt_text:
            raise RequestError("invalid", "prompt: set prompt (ids) or prompt_text")
        if self.tok is None:
            raise RequestError("precondition", "prompt_text: this cloud node has no tokenizer")
        try:
            return start_ids(self.tok, r.prompt_text)  # the tokenizer's own start (BOS) rules
        except ValueError as exc:
            raise RequestError("invalid", f"prompt_text: {exc}") from None

    async def _fail(self, context: grpc.aio.ServicerContext, kind: Kind, message: str) -> NoReturn:
        """Answer a refused request with its status; the one place refusals are counted."""
        self.engine.stats.rejected += 1
        log_event(log, "request_rejected", logging.WARNING, kind=kind, reason=message)
        await context.abort(CODES[kind], message)
        raise AssertionError("abort returned")  # grpc's abort always raises

    async def Speculate(
        self, request_iterator: AsyncIterator[pb.SpecRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SpecReply]:
        owner = object()  # this stream: the sessions it opens are its own
        client = client_of(context)
        lm = self.engine.lm
        texts = TextSessions(
            self.tok, self.tokenizer_id, lm.vocab_size, lm.max_len, self.engine.config.max_draft
        )
        refused: tuple[Kind, str] | None = None
        try:
            async for req in request_iterator:
                try:
                    reply = await self._speculate_one(req, owner, client, texts)
                except RequestError as err:
                    # kept as text, so no traceback (and the request it holds) outlives the call
                    refused = (err.kind, str(err))
                    break
                yield reply
        finally:
            self.engine.close_owned(owner)  # the stream ended: free what it held
        if refused is not None:
            await self._fail(context, *refused)

    async def _speculate_one(
        self, req: pb.SpecRequest, owner: object, client: str, texts: TextSessions
    ) -> pb.SpecReply:
        kind = req.WhichOneof("kind")
        if kind == "open":
            o = req.open
            params = sampling_from_wire(o.sampling)
            text = texts.wanted(o)
            if text:
                prompt = texts.open(o, params)
            else:
                self._same_tokenizer(o.tokenizer)  # before any token id is read
                prompt = list(o.prompt)
            try:
                pos = self.engine.open(o.session_id, prompt, params, owner=owner, client=client)
            except RequestError:
                texts.forget(o.session_id)
                raise
            return pb.SpecReply(
                opened=pb.SessionOpened(
                    session_id=o.session_id,
                    position=pos,
                    max_draft=self.engine.config.max_draft,
                    text_drafts=text,
                )
            )
        if kind == "verify":
            text_round = texts.round(req.verify)
            if text_round is not None:
                res = await self.engine.submit(text_round, owner)
                reply = verdict_to_wire(res)
                reply.verdict.MergeFrom(texts.reply(text_round, res, self.eos_id))
                return reply
            rnd = round_from_wire(
                req.verify, self.engine.lm.vocab_size, self.engine.config.max_draft
            )
            return verdict_to_wire(await self.engine.submit(rnd, owner))
        if kind == "close":
            self.engine.close(req.close.session_id, owner)
            texts.forget(req.close.session_id)
            return pb.SpecReply(closed=pb.SessionClosed(session_id=req.close.session_id))
        raise RequestError("invalid", "SpecRequest: one of open/verify/close")

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> pb.GenerateReply:
        try:
            params = sampling_from_wire(request.sampling)
            prompt = self._generate_prompt(request)
            out = await self.engine.generate(
                prompt,
                params,
                int(request.max_new_tokens),
                self.eos_id,
                client_of(context),
            )
        except RequestError as err:
            refused = (err.kind, str(err))
        else:
            return pb.GenerateReply(
                tokens=out.tokens,
                model_ms=out.model_ms,
                model_cpu_s=out.model_cpu_s,
                text=self.tok.decode(out.tokens) if self.tok is not None else "",
                ended=self.eos_id is not None and self.eos_id in out.tokens,
                tokenizer=self.tokenizer_id,
            )
        await self._fail(context, *refused)

    async def ScoreSteps(
        self, request: pb.ScoreRequest, context: grpc.aio.ServicerContext
    ) -> pb.ScoreReply:
        try:
            if self.steps is None:
                raise RequestError("precondition", "this cloud node serves no step scorer")
            items = [(it.question, list(it.steps)) for it in request.items]
            if request.rewrite_below > 0:
                if len(items) != 1:
                    raise RequestError("invalid", "rewrite_below: one item per call")
                walk = await self.steps.score_and_rewrite(
                    *items[0],
                    request.scorer,
                    request.rewrite_below,
                    request.rewrite_from,
                    request.delimiter,
                )
                return walk_to_wire(walk)
            scores, ms, batch = await self.steps.score(items, request.scorer)
        except RequestError as err:
            refused = (err.kind, str(err))
        else:
            return pb.ScoreReply(
                items=[pb.StepScores(scores=s) for s in scores], model_ms=ms, batch_size=batch
            )
        await self._fail(context, *refused)

    async def GenerateStep(
        self, request: pb.StepRequest, context: grpc.aio.ServicerContext
    ) -> pb.StepReply:
        try:
            if self.steps is None:
                raise RequestError("precondition", "this cloud node writes no steps")
            params = sampling_from_wire(request.sampling)
            step, ms, kept = await self.steps.write_step(
                request.prefix.question,
                list(request.prefix.steps),
                params.temperature,
                params.seed,
                int(request.max_tokens),
                request.draft,
                request.delimiter,
            )
        except RequestError as err:
            refused = (err.kind, str(err))
        else:
            return pb.StepReply(step=step_to_wire(step), model_ms=ms, draft_accepted=kept)
        await self._fail(context, *refused)

    async def Metrics(
        self, request: pb.MetricsRequest, context: grpc.aio.ServicerContext
    ) -> pb.MetricsReply:
        values = self.engine.metrics()
        if self.steps is not None:
            values.update({k: float(v) for k, v in self.steps.counts.items()})
        values.update(emulation_values(self.engine.lm))  # empty unless --device emulates one
        return pb.MetricsReply(node_id=self.node_id, values=values)
