"""The Edge gRPC servicer: converts requests to domain values, runs them, converts back.

Solve runs edge-only, cloud-only or speculatively (edge_node.solving); Reason and ProposeSteps
run step speculation and searches (edge_node.reasoning). Every error becomes a status here:
bad fields INVALID_ARGUMENT, a full node RESOURCE_EXHAUSTED, no cloud UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import NoReturn, TypeVar

import grpc

from edge_node.clouds import CloudDirectory
from edge_node.convert import (
    proposals_to_wire,
    propose_from_wire,
    reason_from_wire,
    reason_result_to_wire,
    solve_from_wire,
    solve_reply_to_wire,
)
from edge_node.prometheus import instrument, solve_figures
from edge_node.reason_types import ReasonLimits
from edge_node.reasoning import Reasoner
from edge_node.solving import NoCloud, SolveDefaults, Solver
from edge_node.speculation import Speculator
from edge_node.stats import Admission, EdgeStats
from models.base import CausalLM, Tokenizer
from node_runtime.emulation import emulation_values
from node_runtime.errors import Overloaded, Precondition
from node_runtime.kinds import KPolicy, Mode
from node_runtime.metrics import NodeMetrics
from node_runtime.openai_api.templates import template_for
from node_runtime.openai_api.text import IncrementalText
from node_runtime.serving import log_event
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

log = logging.getLogger("tandem.edge")
T = TypeVar("T")
# Upstream statuses passed on as they are; any other failure of a cloud or peer is UNAVAILABLE.
_PASSED_ON = {
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}


@dataclass(frozen=True)
class EdgeConfig:
    """Defaults and limits of an edge node."""

    default_mode: Mode = Mode.SPECULATION  # mode when a request leaves it open
    default_k: int = 4  # starting draft length
    default_k_policy: KPolicy = KPolicy.HEURISTIC  # fixed, heuristic or rtt
    k_max: int = 16  # longest draft
    max_new_tokens: int = 256  # cap on a request's new tokens
    max_prompt_chars: int = 65536  # cap on a request's prompt text
    max_request_id_chars: int = 128  # request ids are echoed and logged
    max_concurrent: int = 32  # requests in progress at the most (every RPC but Metrics)
    reasoning: ReasonLimits = field(default_factory=ReasonLimits)  # caps on Reason, ProposeSteps


class EdgeServicer(pb_grpc.EdgeServicer):
    """Solve, Reason, ProposeSteps and Metrics for one edge node."""

    def __init__(
        self,
        node_id: str,
        lm: CausalLM,
        tokenizer: Tokenizer,
        clouds: CloudDirectory,
        config: EdgeConfig = EdgeConfig(),
    ) -> None:
        self.node_id = node_id
        self.lm = lm
        self.tok = tokenizer
        self.clouds = clouds
        self.config = config
        self.spec = Speculator(lm, tokenizer=tokenizer)
        defaults = SolveDefaults(
            config.default_mode, config.default_k, config.default_k_policy, config.k_max
        )
        self.solver = Solver(node_id, lm, tokenizer, clouds, self.spec, defaults)
        try:
            self.reasoner: Reasoner | None = Reasoner(lm, tokenizer, self.spec, config.reasoning)
        except ValueError:  # a tokenizer without the step delimiter: no step-level work here
            self.reasoner = None
        self.admission = Admission(config.max_concurrent)
        self.stats = EdgeStats(lm.name)
        self.template = template_for(tokenizer)  # renders chat requests (SolveRequest.chat_json)
        self.metrics = NodeMetrics("edge", node_id)  # Prometheus, served at the API's /metrics
        instrument(self.metrics, self)

    @property
    def active(self) -> int:
        """Requests in progress."""
        return self.admission.active

    @property
    def counts(self) -> dict[str, float]:
        """The node's counters since start."""
        return self.stats.counts

    async def _fail(
        self, context: grpc.aio.ServicerContext, code: grpc.StatusCode, msg: str
    ) -> NoReturn:
        self.stats.counts["rejected"] += 1
        log_event(log, "request_rejected", logging.WARNING, code=code.name, reason=msg)
        await context.abort(code, msg)
        raise AssertionError("abort returned")  # grpc's abort always raises

    async def _guard(self, context: grpc.aio.ServicerContext, work: Awaitable[T]) -> T:
        """``work``'s result, or the status its error maps to (counted as a rejection)."""
        try:
            return await work
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except ValueError as exc:
            await self._fail(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Overloaded as exc:
            await self._fail(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except Precondition as exc:
            await self._fail(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except NoCloud as exc:
            await self._fail(context, grpc.StatusCode.UNAVAILABLE, str(exc))
        except grpc.RpcError as exc:  # a cloud or a peer failed in a way we cannot mend
            code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNAVAILABLE
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            mine = code if code in _PASSED_ON else grpc.StatusCode.UNAVAILABLE
            await self._fail(context, mine, f"a cloud or peer call failed: {code.name}: {details}")

    def _need_reasoner(self) -> Reasoner:
        if self.reasoner is None:
            raise Precondition("no step drafter: the tokenizer lacks a one-token step delimiter")
        return self.reasoner

    async def Solve(
        self, request: pb.SolveRequest, context: grpc.aio.ServicerContext
    ) -> pb.SolveReply:
        """Generate for a prompt; the reply says where the work ran and what it cost."""
        return await self._guard(context, self._solve(request, None))

    async def SolveStream(
        self, request: pb.SolveRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SolveEvent]:
        """Tokens as they are committed, then the reply as the last event."""
        queue: asyncio.Queue[list[int]] = asyncio.Queue()
        task = asyncio.ensure_future(self._guard(context, self._solve(request, queue.put_nowait)))
        chat = self.template.name if request.chat_json else ""
        text = IncrementalText(self.tok)
        getter: asyncio.Future[list[int]] | None = None
        try:
            while not task.done() or not queue.empty():
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    tokens = getter.result()
                    yield pb.SolveEvent(tokens=tokens, text=text.add(tokens), chat_template=chat)
                else:
                    getter.cancel()
            yield pb.SolveEvent(done=task.result(), chat_template=chat)
        finally:
            task.cancel()  # the client went away: stop working for it
            if getter is not None:
                getter.cancel()

    async def _solve(
        self, request: pb.SolveRequest, on_tokens: Callable[[list[int]], None] | None
    ) -> pb.SolveReply:
        task = solve_from_wire(request, self.tok, self.lm.max_len, self.config, self.template)
        rid = task.request_id or uuid.uuid4().hex
        with self.admission.slot():
            t0 = time.perf_counter()
            try:
                result = await self.solver.solve(task, on_tokens)
            finally:
                self.stats.counts["busy_s"] += time.perf_counter() - t0
        target = self.clouds.model_of(result.cloud_node) or result.cloud_node
        self.stats.count(result, target)
        figures = solve_figures(result, self.lm.name, target, len(task.prompt))
        self.metrics.observe_generation(figures)
        log_event(
            log,
            "request_done",
            request_id=rid,
            mode=Mode(result.final_mode).value,
            tokens=len(result.tokens),
            degraded=result.degraded,
            plan_revisions=result.account.plan_revisions,
            wall_s=round(result.account.wall_s, 4),
        )
        reply = solve_reply_to_wire(rid, result, self.tok)
        reply.account.prompt_tokens = len(task.prompt)
        return reply

    async def ProposeSteps(
        self, request: pb.ProposeRequest, context: grpc.aio.ServicerContext
    ) -> pb.ProposeReply:
        """Candidate next steps for another edge's search."""
        return await self._guard(context, self._propose(request))

    async def _propose(self, request: pb.ProposeRequest) -> pb.ProposeReply:
        reasoner = self._need_reasoner()
        task = propose_from_wire(request, self.config.reasoning)
        with self.admission.slot():
            self.stats.counts["propose_requests"] += 1
            return proposals_to_wire(await reasoner.propose(task))

    async def Reason(
        self, request: pb.ReasonRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReasonReply:
        """Step speculation or a PRM search, scored by a cloud."""
        return await self._guard(context, self._reason(request))

    async def _reason(self, request: pb.ReasonRequest) -> pb.ReasonReply:
        reasoner = self._need_reasoner()
        task = reason_from_wire(request, self.config.reasoning)
        with self.admission.slot():
            self.stats.counts["reason_requests"] += 1
            picked = await self.clouds.pick([])
            if picked is None:
                raise NoCloud("no cloud node to score steps")
            name, stub = picked
            peers = list(self.clouds.peer_edges)
            result = await reasoner.reason(task, stub, self.clouds.dial_address(name), peers)
        log_event(
            log,
            "reason_done",
            strategy=task.strategy,
            answer=result.answer,
            wall_s=round(result.account.wall_s, 4),
        )
        return reason_result_to_wire(result)

    async def Metrics(
        self, request: pb.MetricsRequest, context: grpc.aio.ServicerContext
    ) -> pb.MetricsReply:
        """The node's counters, with the emulated device's when ``--device`` names one."""
        values = self.stats.values(self.active)
        values.update(emulation_values(self.lm))
        # per link and per pair, for `tandem status`: rtt_ms:<cloud>, acceptance:<drafter>-><target>
        values.update({f"rtt_ms:{peer}": ms for peer, ms in self.clouds.rtt_ms.items()})
        for (drafter, target), acc in self.stats.acceptance.items():
            values[f"acceptance:{drafter}->{target}"] = acc.acceptance_rate
        return pb.MetricsReply(node_id=self.node_id, values=values)

    def close(self) -> None:
        """Release the reasoner's channels and threads and the drafter's thread."""
        if self.reasoner is not None:
            self.reasoner.close()
        self.spec.pool.shutdown(wait=False, cancel_futures=True)
