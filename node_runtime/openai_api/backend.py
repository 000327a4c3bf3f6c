"""Where the HTTP API sends its requests: an edge node's gRPC service, or the coordinator's job API.

Both backends speak the wire contract only, so the API runs the same code on the edge (dialing its
own gRPC server on loopback) and on the coordinator (the cluster's front door, through
``Coordinator.Submit``). Wire messages are built and read here and nowhere else in the package.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

import grpc

from node_runtime.kinds import KPolicy, Mode, Objective, QualityFloor
from node_runtime.openai_api.templates import Chat
from node_runtime.serving import aio_channel
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

DEFAULT_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Knobs:
    """Tandem's own request fields (extra body fields of an OpenAI request)."""

    mode: Mode | None = None  # None: planned
    k_policy: KPolicy | None = None  # None: the edge's default
    draft_length: int = 0  # starting k; 0: the edge's or its plan's
    objective: Objective = Objective.LATENCY  # what a plan minimises
    quality_floor: QualityFloor | None = None  # None: the node's default (target)
    cost_weight: float = 0.0  # MIX objective: latency seconds one cloud CPU-second is worth
    pipelined: bool = False  # speculation must draft ahead


@dataclass(frozen=True)
class Reasoning:
    """A reasoning request (``Edge.Reason``): a strategy and its budgets."""

    strategy: str  # specreason, best_of_n, beam, ...
    token_budget: int = 0  # drafted tokens; 0: unbounded
    score_budget: int = 0  # scorer calls; 0: unbounded
    n: int = 0  # candidates (searches); 0: the edge's default
    threshold: float = 0.0  # specreason: accept a step scoring at least this; 0: default


@dataclass(frozen=True)
class Generation:
    """One generation: a prompt or a conversation, sampling, and Tandem's knobs."""

    prompt: str = ""  # /v1/completions
    chat: Chat | None = None  # /v1/chat/completions
    max_tokens: int = 0  # 0: the edge's cap
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    knobs: Knobs = Knobs()
    model: str = ""  # the model id asked for ("" or "tandem": any)
    timeout_s: float = DEFAULT_TIMEOUT_S


@dataclass(frozen=True)
class Delta:
    """Text the generation added."""

    text: str
    template: str  # the chat template the edge rendered with ("" for plain prompts)
    tokens: int = 0  # tokens committed with it


@dataclass(frozen=True)
class Done:
    """The end of a generation, with its account."""

    reply: pb.SolveReply
    template: str
    edge: str  # the edge node that ran it


class Backend(Protocol):
    """What the HTTP layer needs of the cluster."""

    async def models(self) -> list[str]:
        """Model ids a request may name."""
        ...

    def stream(self, gen: Generation) -> AsyncIterator[Delta | Done]:
        """Text as it is committed, then ``Done``."""
        ...

    async def reason(self, question: str, reasoning: Reasoning, gen: Generation) -> pb.ReasonReply:
        """Step speculation or a search for ``question``."""
        ...

    async def close(self) -> None:
        """Release channels."""
        ...


def _sampling(gen: Generation) -> pb.Sampling:
    return pb.Sampling(temperature=gen.temperature, top_p=gen.top_p, seed=gen.seed)


def _reason_request(question: str, r: Reasoning, gen: Generation) -> pb.ReasonRequest:
    return pb.ReasonRequest(
        request_id=uuid.uuid4().hex,
        question=question,
        strategy=r.strategy,
        n=r.n,
        threshold=r.threshold,
        token_budget=r.token_budget,
        score_budget=r.score_budget,
        seed=gen.seed,
    )


class EdgeBackend:
    """An edge node's gRPC service (the edge's own API dials it on loopback)."""

    def __init__(self, address: str, model: str) -> None:
        self.address = address
        self.model = model
        self._channel: grpc.aio.Channel | None = None

    def _stub(self) -> pb_grpc.EdgeStub:
        if self._channel is None:
            self._channel = aio_channel(self.address)
        return pb_grpc.EdgeStub(self._channel)

    async def models(self) -> list[str]:
        """The drafter this edge serves."""
        return [self.model]

    async def stream(self, gen: Generation) -> AsyncIterator[Delta | Done]:
        """``Edge.SolveStream``."""
        call = self._stub().SolveStream(solve_request(gen), timeout=gen.timeout_s)
        try:
            async for event in call:
                if event.HasField("done"):
                    yield Done(event.done, event.chat_template, self.address)
                elif event.tokens:
                    yield Delta(event.text, event.chat_template, len(event.tokens))
        finally:
            call.cancel()  # a client that stopped reading (or a stop sequence) ends the work

    async def reason(self, question: str, reasoning: Reasoning, gen: Generation) -> pb.ReasonReply:
        """``Edge.Reason``."""
        request = _reason_request(question, reasoning, gen)
        return await self._stub().Reason(request, timeout=gen.timeout_s)

    async def close(self) -> None:
        """Close the channel."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = None


def solve_request(gen: Generation) -> pb.SolveRequest:
    """The ``SolveRequest`` for a generation."""
    k = gen.knobs
    return pb.SolveRequest(
        request_id=uuid.uuid4().hex,
        prompt=gen.prompt,
        chat_json=gen.chat.to_json() if gen.chat is not None else "",
        sampling=_sampling(gen),
        mode=k.mode.to_wire() if k.mode is not None else pb.MODE_UNSPECIFIED,
        max_new_tokens=gen.max_tokens,
        draft_length=k.draft_length,
        k_policy=k.k_policy.value if k.k_policy is not None else "",
        objective=k.objective.to_wire(),
        quality_floor=k.quality_floor.to_wire() if k.quality_floor else pb.QUALITY_UNSPECIFIED,
        cost_weight=k.cost_weight,
        pipelined=k.pipelined,
    )


def job_request(gen: Generation, edge_id: str = "") -> pb.JobRequest:
    """The coordinator's ``JobRequest`` for a generation, on ``edge_id`` ("" lets it pick)."""
    k = gen.knobs
    return pb.JobRequest(
        job_id=uuid.uuid4().hex,
        prompt=gen.prompt,
        chat_json=gen.chat.to_json() if gen.chat is not None else "",
        sampling=_sampling(gen),
        objective=k.objective.to_wire(),
        quality_floor=k.quality_floor.to_wire() if k.quality_floor else pb.QUALITY_UNSPECIFIED,
        cost_weight=k.cost_weight,
        deadline_s=gen.timeout_s,
        max_new_tokens=gen.max_tokens,
        edge_id=edge_id,
        pipelined=k.pipelined,
        mode=k.mode.to_wire() if k.mode is not None else pb.MODE_UNSPECIFIED,
        k_policy=k.k_policy.value if k.k_policy is not None else "",
        draft_length=k.draft_length,
    )


class JobBackend:
    """The coordinator's job API: ``Submit`` runs a generation on an edge it picks."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._channel: grpc.aio.Channel | None = None

    def _channel_to(self) -> grpc.aio.Channel:
        if self._channel is None:
            self._channel = aio_channel(self.address)
        return self._channel

    async def _edges(self) -> list[pb.NodeInfo]:
        stub = pb_grpc.CoordinatorStub(self._channel_to())
        reply = await stub.ListNodes(pb.ListNodesRequest(), timeout=10)
        return [n for n in reply.nodes if n.role == pb.ROLE_EDGE]

    async def models(self) -> list[str]:
        """The drafters of the live edge nodes."""
        return sorted({m.name for n in await self._edges() for m in n.models})

    async def _edge_for(self, model: str) -> pb.NodeInfo | None:
        """An edge serving ``model``; None when any edge will do (the coordinator picks)."""
        if not model or model == "tandem":
            return None
        serving = [n for n in await self._edges() if any(m.name == model for m in n.models)]
        return serving[0] if serving else None

    async def stream(self, gen: Generation) -> AsyncIterator[Delta | Done]:
        """``Coordinator.Submit``: the edge's events, relayed."""
        edge = await self._edge_for(gen.model)
        stub = pb_grpc.CoordinatorStub(self._channel_to())
        call = stub.Submit(job_request(gen, edge.node_id if edge else ""), timeout=gen.timeout_s)
        template = ""  # the relayed reply drops the edge's template name; its deltas carry it
        try:
            async for event in call:
                if event.HasField("done"):
                    yield Done(event.done.result, template, event.done.edge_id)
                elif event.HasField("progress"):
                    template = event.progress.chat_template or template
                    if event.progress.tokens:
                        yield Delta(event.progress.text, template, len(event.progress.tokens))
        finally:
            call.cancel()

    async def reason(self, question: str, reasoning: Reasoning, gen: Generation) -> pb.ReasonReply:
        """``Edge.Reason`` on an edge the registry lists (the job API has no reasoning job)."""
        edge = await self._edge_for(gen.model)
        if edge is None:
            edges = await self._edges()
            if not edges:
                raise NoEdge("no live edge node")
            edge = edges[0]
        async with aio_channel(edge.address) as ch:
            request = _reason_request(question, reasoning, gen)
            return await pb_grpc.EdgeStub(ch).Reason(request, timeout=gen.timeout_s)

    async def close(self) -> None:
        """Close the channel."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = None


class NoEdge(Exception):
    """The cluster has no edge node to run a request on."""
