"""The Edge gRPC servicer: takes requests and runs them edge-only, cloud-only or speculatively."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import NoReturn

import grpc

from edge_node.adaptive import K_POLICIES
from edge_node.clouds import CloudDirectory
from edge_node.reasoning import Reasoner
from edge_node.speculation import (
    CLOUD_ONLY,
    SPECULATION,
    Account,
    Hooks,
    Replan,
    SpecResult,
    SpecSettings,
    Speculator,
)
from models.base import CausalLM, Tokenizer
from models.generate import generate
from models.sampling import SamplingParams
from node_runtime.lifecycle import RateWindow
from node_runtime.serving import log_event
from node_runtime.telemetry import AcceptanceStats, Reading
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

log = logging.getLogger("tandem.edge")
MODE_OF = {
    "edge-only": pb.MODE_EDGE_ONLY,
    CLOUD_ONLY: pb.MODE_CLOUD_ONLY,
    SPECULATION: pb.MODE_TOKEN_SPECULATION,
}
NAME_OF = {v: k for k, v in MODE_OF.items()}


@dataclass(frozen=True)
class EdgeConfig:
    """Defaults and limits of an edge node."""

    default_mode: int = pb.MODE_TOKEN_SPECULATION  # mode when a request leaves it open
    default_k: int = 4  # starting draft length
    default_k_policy: str = "heuristic"  # fixed, heuristic or rtt
    k_max: int = 16  # longest draft
    max_new_tokens: int = 256  # cap on a request's new tokens
    max_prompt_chars: int = 65536  # cap on a request's prompt text
    max_concurrent: int = 32  # requests in progress at the most; past it RESOURCE_EXHAUSTED


class EdgeServicer(pb_grpc.EdgeServicer):
    """Solve and Metrics for one edge node."""

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
        self.spec = Speculator(lm)
        try:
            self.reasoner: Reasoner | None = Reasoner(lm, tokenizer, self.spec)
        except ValueError:  # a tokenizer without the step delimiter: no step-level work here
            self.reasoner = None
        self.active = 0
        self.window = RateWindow()  # telemetry rates since the previous sample
        self.draft_ms: float | None = None  # EWMA of drafter ms per drafted token
        self.acceptance: dict[tuple[str, str], AcceptanceStats] = {}  # (drafter, target)
        self.counts: dict[str, float] = {
            "requests": 0.0,
            "degraded": 0.0,
            "generated_tokens": 0.0,
            "drafted_tokens": 0.0,
            "accepted_tokens": 0.0,
            "verify_rounds": 0.0,
            "rejected": 0.0,
            "busy_s": 0.0,
        }

    async def _reject(
        self, context: grpc.aio.ServicerContext, code: grpc.StatusCode, msg: str
    ) -> NoReturn:
        self.counts["rejected"] += 1
        log_event(log, "request_rejected", logging.WARNING, code=code.name, reason=msg)
        await context.abort(code, msg)
        raise AssertionError("abort returned")  # grpc's abort always raises

    def _parse(self, r: pb.SolveRequest) -> tuple[list[int], SamplingParams, int, str]:
        if not r.prompt or len(r.prompt) > self.config.max_prompt_chars:
            raise ValueError(f"prompt: must be 1 to {self.config.max_prompt_chars} characters")
        prompt = [self.tok.bos_id, *self.tok.encode(r.prompt)]
        if len(prompt) >= self.lm.max_len - 1:
            raise ValueError(f"prompt: {len(prompt)} tokens leave no room in {self.lm.max_len}")
        try:
            params = SamplingParams(
                r.sampling.temperature, r.sampling.top_p or 1.0, r.sampling.seed
            )
        except ValueError as exc:
            raise ValueError(f"sampling: {exc}") from None
        if r.max_new_tokens < 0 or r.max_new_tokens > self.config.max_new_tokens:
            raise ValueError(f"max_new_tokens: must be 0 to {self.config.max_new_tokens}")
        if not 0 <= r.draft_length <= self.config.k_max:
            raise ValueError(f"draft_length: must be 0 to {self.config.k_max}")
        policy = r.k_policy or self.config.default_k_policy
        if policy not in K_POLICIES:
            raise ValueError(f"k_policy: {policy!r} not in {K_POLICIES}")
        return prompt, params, r.max_new_tokens or self.config.max_new_tokens, policy

    async def Solve(
        self, request: pb.SolveRequest, context: grpc.aio.ServicerContext
    ) -> pb.SolveReply:
        return await self._execute(request, context, None)

    async def SolveStream(
        self, request: pb.SolveRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SolveEvent]:
        """Tokens as they are committed, then the reply as the last event."""
        queue: asyncio.Queue[list[int]] = asyncio.Queue()
        task = asyncio.ensure_future(self._execute(request, context, queue.put_nowait))
        try:
            while not task.done() or not queue.empty():
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    tokens = getter.result()
                    yield pb.SolveEvent(tokens=tokens, text=self.tok.decode(tokens))
                else:
                    getter.cancel()
            yield pb.SolveEvent(done=task.result())
        finally:
            task.cancel()  # the client went away: stop working for it

    async def _execute(
        self,
        request: pb.SolveRequest,
        context: grpc.aio.ServicerContext,
        on_tokens: Callable[[list[int]], None] | None,
    ) -> pb.SolveReply:
        try:
            prompt, params, max_new, policy = self._parse(request)
        except ValueError as exc:
            await self._reject(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if self.active >= self.config.max_concurrent:
            await self._reject(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.active} requests in progress (max {self.config.max_concurrent})",
            )
        rid = request.request_id or uuid.uuid4().hex
        self.active += 1
        t0 = time.perf_counter()
        try:
            mode, k, first, hooks = await self._plan(request, len(prompt), max_new)
            hooks.on_tokens = on_tokens
            if mode == pb.MODE_EDGE_ONLY:
                result = await self._edge_only(prompt, params, max_new)
                if on_tokens is not None:
                    on_tokens(result.tokens)
            else:
                if k and not request.k_policy:
                    # the coordinator chose k with every node's figures; revisions adjust it
                    policy = "fixed"
                k = k or request.draft_length or self.config.default_k
                settings = SpecSettings(max_new, self.tok.eos_id, k, policy, self.config.k_max)
                start = CLOUD_ONLY if mode == pb.MODE_CLOUD_ONLY else SPECULATION
                result = await self.spec.run(
                    prompt, params, settings, self.clouds.pick, hooks, first, start
                )
        finally:
            self.active -= 1
            self.counts["busy_s"] += time.perf_counter() - t0
        finished = MODE_OF[result.final_mode]
        self._count(result)
        log_event(
            log,
            "request_done",
            request_id=rid,
            mode=pb.Mode.Name(finished),
            tokens=len(result.tokens),
            degraded=result.degraded,
            plan_revisions=result.account.plan_revisions,
            wall_s=round(result.account.wall_s, 4),
        )
        return self._reply(rid, result, finished)

    async def _plan(
        self, request: pb.SolveRequest, n_prompt: int, max_new: int
    ) -> tuple[int, int, tuple[str, pb_grpc.CloudStub] | None, Hooks]:
        """The mode, k and first cloud; with no mode asked for, the coordinator's plan."""
        hooks = Hooks(observe_rtt=self.clouds.observe_rtt)
        if request.mode != pb.MODE_UNSPECIFIED or not self.clouds.has_coordinator:
            return request.mode or self.config.default_mode, 0, None, hooks
        ask = pb.PlanRequest(
            edge_id=self.node_id,
            objective=request.objective,
            quality_floor=request.quality_floor,
            cost_weight=request.cost_weight,
            prompt_tokens=n_prompt,
            max_new_tokens=max_new,
        )
        plan = await self.clouds.plan(ask)
        if plan is None:  # no coordinator answer: this node's default
            return self.config.default_mode, 0, None, hooks

        async def replan(left: int, current: str) -> Replan | None:
            ask.max_new_tokens = left
            p = await self.clouds.plan(ask, fresh=True)
            if p is None or p.mode == pb.MODE_EDGE_ONLY or not p.cloud.address:
                return None
            cloud = (p.cloud.node_id, self.clouds.stub(p.cloud.address))
            return Replan(NAME_OF[p.mode], cloud, p.draft_length)

        hooks.replan = replan
        first = None
        if plan.cloud.address:
            first = (plan.cloud.node_id, self.clouds.stub(plan.cloud.address))
        return plan.mode, plan.draft_length, first, hooks

    def _reply(self, rid: str, result: SpecResult, finished: int) -> pb.SolveReply:
        a = result.account
        return pb.SolveReply(
            request_id=rid,
            text=self.tok.decode(result.tokens),
            tokens=result.tokens,
            mode=finished,
            degraded=result.degraded,
            cloud_node=result.cloud_node,
            note=result.note,
            account=pb.Account(
                generated_tokens=a.generated_tokens,
                drafted_tokens=a.drafted_tokens,
                accepted_tokens=a.accepted_tokens,
                verify_rounds=a.verify_rounds,
                wall_s=a.wall_s,
                cloud_model_cpu_s=a.cloud_model_cpu_s,
                edge_model_s=a.edge_model_s,
                bytes_sent=a.bytes_sent,
                bytes_received=a.bytes_received,
                ttft_s=a.ttft_s,
            ),
        )

    def calibrate(self, tokens: int = 8) -> None:
        """Time a short draft so plans start from this device's real speed (warm run only)."""
        prompt = [self.tok.bos_id if self.tok.bos_id is not None else 0] * 4
        generate(self.lm, prompt, SamplingParams(), tokens, None)  # first run pays warm-up
        t0 = time.perf_counter()
        generate(self.lm, prompt, SamplingParams(), tokens, None)
        self.draft_ms = (time.perf_counter() - t0) * 1e3 / (tokens + 1)

    def reading(self) -> Reading:
        """This node's telemetry: load, RTT to each cloud, acceptance per pair, draft cost."""
        return Reading(
            active_sessions=self.active,
            tokens_per_s=self.window.rate("tokens", self.counts["generated_tokens"]),
            busy_fraction=min(1.0, self.window.rate("busy_s", self.counts["busy_s"])),
            rtt_ms=dict(self.clouds.rtt_ms),
            acceptance=dict(self.acceptance),
            extra={"draft_ms_per_token": self.draft_ms} if self.draft_ms else {},
        )

    def _count(self, r: SpecResult) -> None:
        a = r.account
        if a.drafted_tokens:
            pair = (self.lm.name, self.clouds.model_of(r.cloud_node) or r.cloud_node)
            self.acceptance[pair] = self.acceptance.get(pair, AcceptanceStats()) + AcceptanceStats(
                a.drafted_tokens, a.accepted_tokens, a.verify_rounds, a.full_rounds
            )
            per = 1e3 * a.edge_model_s / a.drafted_tokens
            self.draft_ms = per if self.draft_ms is None else 0.7 * self.draft_ms + 0.3 * per
        c = self.counts
        c["requests"] += 1
        c["degraded"] += float(r.degraded)
        c["generated_tokens"] += a.generated_tokens
        c["drafted_tokens"] += a.drafted_tokens
        c["accepted_tokens"] += a.accepted_tokens
        c["verify_rounds"] += a.verify_rounds

    async def _edge_only(
        self, prompt: list[int], params: SamplingParams, max_new: int
    ) -> SpecResult:
        t0 = time.perf_counter()
        tokens = await self.spec.compute(
            lambda: generate(self.lm, prompt, params, max_new, self.tok.eos_id)
        )
        wall = time.perf_counter() - t0
        acc = Account(len(tokens), wall_s=wall, edge_model_s=wall, ttft_s=wall)
        return SpecResult(tokens, acc, final_mode="edge-only")

    async def ProposeSteps(
        self, request: pb.ProposeRequest, context: grpc.aio.ServicerContext
    ) -> pb.ProposeReply:
        if self.reasoner is None:
            await self._reject(context, grpc.StatusCode.FAILED_PRECONDITION, "no step drafter")
        try:
            return await self.reasoner.propose(request)
        except ValueError as exc:
            await self._reject(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    async def Reason(
        self, request: pb.ReasonRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReasonReply:
        if self.reasoner is None:
            await self._reject(context, grpc.StatusCode.FAILED_PRECONDITION, "no step drafter")
        if not request.question or len(request.question) > self.config.max_prompt_chars:
            await self._reject(
                context, grpc.StatusCode.INVALID_ARGUMENT, "question: 1 to 65536 chars"
            )
        if not 0.0 <= request.threshold <= 1.0:
            await self._reject(context, grpc.StatusCode.INVALID_ARGUMENT, "threshold: 0 to 1")
        picked = await self.clouds.pick([])
        if picked is None:
            await self._reject(context, grpc.StatusCode.UNAVAILABLE, "no cloud node to score steps")
        name, stub = picked
        self.active += 1
        try:
            reply = await self.reasoner.reason(
                request, stub, self.clouds.dial_address(name), list(self.clouds.peer_edges)
            )
        except ValueError as exc:
            await self._reject(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        finally:
            self.active -= 1
        log_event(
            log,
            "reason_done",
            strategy=request.strategy,
            answer=reply.answer,
            wall_s=round(reply.account.wall_s, 4),
        )
        return reply

    async def Metrics(
        self, request: pb.MetricsRequest, context: grpc.aio.ServicerContext
    ) -> pb.MetricsReply:
        values = dict(self.counts)
        values["active_requests"] = float(self.active)
        d = values["drafted_tokens"]
        values["acceptance_rate"] = values["accepted_tokens"] / d if d else 0.0
        return pb.MetricsReply(node_id=self.node_id, values=values)


async def wait_forever() -> None:
    """Park until cancelled (servers run until a signal)."""
    await asyncio.Event().wait()
