"""The Edge gRPC servicer: takes requests and runs them edge-only, cloud-only or speculatively."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass

import grpc

from edge_node.adaptive import K_POLICIES
from edge_node.clouds import CloudDirectory
from edge_node.speculation import FAILOVER_CODES, Account, SpecResult, SpecSettings, Speculator
from models.base import CausalLM, Tokenizer
from models.generate import generate
from models.sampling import SamplingParams
from tandem_wire.serving import log_event
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

log = logging.getLogger("tandem.edge")


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
        self.active = 0
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
    ) -> None:
        self.counts["rejected"] += 1
        log_event(log, "request_rejected", logging.WARNING, code=code.name, reason=msg)
        await context.abort(code, msg)

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
        try:
            prompt, params, max_new, policy = self._parse(request)
        except ValueError as exc:
            await self._reject(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise
        if self.active >= self.config.max_concurrent:
            await self._reject(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.active} requests in progress (max {self.config.max_concurrent})",
            )
        mode = request.mode or self.config.default_mode
        rid = request.request_id or uuid.uuid4().hex
        self.active += 1
        t0 = time.perf_counter()
        try:
            if mode == pb.MODE_EDGE_ONLY:
                result = await self._edge_only(prompt, params, max_new)
            elif mode == pb.MODE_CLOUD_ONLY:
                result = await self._cloud_only(prompt, params, max_new)
            else:
                settings = SpecSettings(
                    max_new,
                    self.tok.eos_id,
                    request.draft_length or self.config.default_k,
                    policy,
                    self.config.k_max,
                )
                result = await self.spec.run(prompt, params, settings, self.clouds.pick)
        finally:
            self.active -= 1
            self.counts["busy_s"] += time.perf_counter() - t0
        finished = pb.MODE_EDGE_ONLY if result.degraded else mode
        self._count(result)
        log_event(
            log,
            "request_done",
            request_id=rid,
            mode=pb.Mode.Name(finished),
            tokens=len(result.tokens),
            degraded=result.degraded,
            wall_s=round(result.account.wall_s, 4),
        )
        a = result.account
        return pb.SolveReply(
            request_id=rid,
            text=self.tok.decode(result.tokens),
            tokens=result.tokens,
            mode=finished,
            degraded=result.degraded and mode != pb.MODE_EDGE_ONLY,
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

    def _count(self, r: SpecResult) -> None:
        c, a = self.counts, r.account
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
        tokens = await self.spec._compute(
            lambda: generate(self.lm, prompt, params, max_new, self.tok.eos_id)
        )
        wall = time.perf_counter() - t0
        return SpecResult(tokens, Account(len(tokens), wall_s=wall, edge_model_s=wall, ttft_s=wall))

    async def _cloud_only(
        self, prompt: list[int], params: SamplingParams, max_new: int
    ) -> SpecResult:
        t0 = time.perf_counter()
        tried: list[str] = []
        req = pb.GenerateRequest(
            prompt=prompt,
            max_new_tokens=max_new,
            sampling=pb.Sampling(
                temperature=params.temperature, top_p=params.top_p, seed=params.seed
            ),
        )
        note = ""
        while (picked := await self.clouds.pick(tried)) is not None:
            name, stub = picked
            tried.append(name)
            try:
                reply = await stub.Generate(req, timeout=60.0)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in FAILOVER_CODES:
                    raise
                note = f"cloud {name} lost: {exc.code().name}"
                continue
            wall = time.perf_counter() - t0
            acc = Account(
                len(reply.tokens),
                wall_s=wall,
                cloud_model_cpu_s=reply.model_cpu_s,
                ttft_s=wall,
                bytes_sent=req.ByteSize(),
                bytes_received=reply.ByteSize(),
            )
            return SpecResult(list(reply.tokens), acc, cloud_node=name)
        alone = await self._edge_only(prompt, params, max_new)
        return SpecResult(alone.tokens, alone.account, True, "", note or "no cloud node available")

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
