"""The Cloud gRPC servicer: converts wire messages, calls the engine, converts back."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import NoReturn

import grpc
import numpy as np

from cloud_node.engine import RequestError, Round, RoundResult, VerifyEngine
from cloud_node.steps import StepService, Walk
from models.reasoning.proposer import StepDraft
from models.sampling import SamplingParams
from models.speculative import Proposal
from node_runtime.serving import log_event
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

log = logging.getLogger("tandem.cloud")

CODES = {
    "invalid": grpc.StatusCode.INVALID_ARGUMENT,
    "not_found": grpc.StatusCode.NOT_FOUND,
    "exhausted": grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def sampling_from_wire(s: pb.Sampling) -> SamplingParams:
    """Wire sampling settings -> SamplingParams, INVALID_ARGUMENT-ready errors."""
    try:
        return SamplingParams(float(s.temperature), float(s.top_p) or 1.0, int(s.seed))
    except ValueError as exc:
        raise RequestError("invalid", f"sampling: {exc}") from None


def round_from_wire(v: pb.VerifyRequest, vocab_size: int) -> Round:
    """A VerifyRequest as a domain Round; q rebuilt dense from its sparse form."""
    tokens = np.asarray(v.draft, dtype=np.int64)
    q = None
    if len(v.q):
        if len(v.q) != len(tokens):
            raise RequestError("invalid", f"q: {len(v.q)} distributions for {len(tokens)} drafts")
        q = np.zeros((len(tokens), vocab_size))
        for i, d in enumerate(v.q):
            ids = np.asarray(d.ids, dtype=np.int64)
            ps = np.asarray(d.probs, dtype=np.float64)
            if len(ids) != len(ps) or len(ids) == 0:
                raise RequestError("invalid", f"q[{i}]: ids and probs must be non-empty, same size")
            if ids.min() < 0 or ids.max() >= vocab_size:
                raise RequestError("invalid", f"q[{i}]: token id outside [0, {vocab_size})")
            if not np.all(np.isfinite(ps)) or ps.min() < 0 or abs(ps.sum() - 1.0) > 1e-3:
                raise RequestError("invalid", f"q[{i}]: probs must be >= 0 and sum to 1")
            q[i, ids] = ps
            if 0 <= tokens[i] < vocab_size and q[i, tokens[i]] <= 0:
                raise RequestError("invalid", f"q[{i}]: draft token {tokens[i]} has q = 0")
    return Round(v.session_id, int(v.round_id), int(v.base_position), Proposal(tokens, q))


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


class CloudServicer(pb_grpc.CloudServicer):
    """Speculate (bidirectional verify stream), Generate (cloud-only), Metrics."""

    def __init__(
        self,
        engine: VerifyEngine,
        node_id: str,
        eos_id: int | None,
        steps: StepService | None = None,
    ) -> None:
        self.engine = engine
        self.node_id = node_id
        self.eos_id = eos_id
        self.steps = steps

    async def _fail(self, context: grpc.aio.ServicerContext, err: RequestError) -> NoReturn:
        self.engine.stats.rejected += 1
        log_event(log, "request_rejected", logging.WARNING, kind=err.kind, reason=str(err))
        await context.abort(CODES[err.kind], str(err))
        raise AssertionError("abort returned")  # grpc's abort always raises

    async def Speculate(
        self, request_iterator: AsyncIterator[pb.SpecRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SpecReply]:
        opened: set[str] = set()
        try:
            async for req in request_iterator:
                kind = req.WhichOneof("kind")
                try:
                    if kind == "open":
                        o = req.open
                        pos = self.engine.open(
                            o.session_id, list(o.prompt), sampling_from_wire(o.sampling)
                        )
                        opened.add(o.session_id)
                        yield pb.SpecReply(
                            opened=pb.SessionOpened(
                                session_id=o.session_id,
                                position=pos,
                                max_draft=self.engine.config.max_draft,
                            )
                        )
                    elif kind == "verify":
                        rnd = round_from_wire(req.verify, self.engine.lm.vocab_size)
                        yield verdict_to_wire(await self.engine.submit(rnd))
                    elif kind == "close":
                        self.engine.close(req.close.session_id)
                        opened.discard(req.close.session_id)
                        yield pb.SpecReply(closed=pb.SessionClosed(session_id=req.close.session_id))
                    else:
                        raise RequestError("invalid", "SpecRequest: one of open/verify/close")
                except RequestError as err:
                    await self._fail(context, err)
                    return
        finally:
            for sid in opened:  # the client is gone: free what it held
                self.engine.close(sid)

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> pb.GenerateReply:
        try:
            params = sampling_from_wire(request.sampling)
            tokens, ms, cpu = await self.engine.generate(
                list(request.prompt), params, int(request.max_new_tokens), self.eos_id
            )
        except RequestError as err:
            await self._fail(context, err)
        return pb.GenerateReply(tokens=tokens, model_ms=ms, model_cpu_s=cpu)

    async def ScoreSteps(
        self, request: pb.ScoreRequest, context: grpc.aio.ServicerContext
    ) -> pb.ScoreReply:
        try:
            if self.steps is None:
                raise RequestError("invalid", "this cloud node serves no step scorer")
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
            await self._fail(context, err)
        return pb.ScoreReply(
            items=[pb.StepScores(scores=s) for s in scores], model_ms=ms, batch_size=batch
        )

    async def GenerateStep(
        self, request: pb.StepRequest, context: grpc.aio.ServicerContext
    ) -> pb.StepReply:
        try:
            if self.steps is None:
                raise RequestError("invalid", "this cloud node writes no steps")
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
            await self._fail(context, err)
        return pb.StepReply(step=step_to_wire(step), model_ms=ms, draft_accepted=kept)

    async def Metrics(
        self, request: pb.MetricsRequest, context: grpc.aio.ServicerContext
    ) -> pb.MetricsReply:
        values = self.engine.metrics()
        if self.steps is not None:
            values.update({k: float(v) for k, v in self.steps.counts.items()})
        return pb.MetricsReply(node_id=self.node_id, values=values)
