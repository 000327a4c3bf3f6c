"""Tandem's Python client over the coordinator's gRPC job API: generate, stream, reason, status.

    from tandem.client import Client

    with Client("127.0.0.1:7000") as tandem:
        print(tandem.generate("Q 17 + 5 * 3 - 4 ?").text)
        for piece in tandem.stream("Q 3 * 4 + 5 - 6 ?", mode="speculation"):
            print(piece.text, end="", flush=True)

``AsyncClient`` is the same on asyncio; ``Client`` runs one on a private event loop thread.
Generation goes through ``Coordinator.Submit``. The job API has no reasoning job, so ``reason``
calls ``Edge.Reason`` on an edge the coordinator lists; ``status`` asks every listed node for
its metrics (load, acceptance per pair, RTT per link).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

import grpc

from node_runtime.kinds import KPolicy, Mode, Objective, QualityFloor
from node_runtime.openai_api.backend import Generation, Knobs, job_request
from node_runtime.serving import aio_channel
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

T = TypeVar("T")
ROLE_NAMES = {pb.ROLE_EDGE: "edge", pb.ROLE_CLOUD: "cloud"}


@dataclass(frozen=True)
class Result:
    """A finished generation and where it ran."""

    text: str
    tokens: tuple[int, ...]
    mode: str  # the mode that finished it
    edge: str  # the edge node that ran it
    cloud: str  # the cloud node that verified or generated ("" for edge-only)
    degraded: bool  # the cloud was lost and the edge finished alone
    note: str  # why it degraded, when it did
    account: dict[str, float] = field(default_factory=dict)  # tokens, rounds, times, bytes

    @property
    def acceptance_rate(self) -> float | None:
        """Accepted / drafted tokens; None when nothing was drafted."""
        drafted = self.account.get("drafted_tokens", 0)
        return self.account.get("accepted_tokens", 0) / drafted if drafted else None


@dataclass(frozen=True)
class Piece:
    """Text as it is committed; the last piece carries the result."""

    text: str
    result: Result | None = None


@dataclass(frozen=True)
class Reasoned:
    """A reasoning request's answer, steps and account."""

    answer: str
    steps: tuple[str, ...]
    text: str
    account: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class NodeState:
    """A live node and its latest figures (empty when it did not answer)."""

    node_id: str
    role: str
    address: str
    models: tuple[str, ...]
    device: str
    values: dict[str, float] = field(default_factory=dict)
    error: str = ""

    @property
    def load(self) -> float:
        """Requests (edge) or sessions and generations (cloud) in progress."""
        v = self.values
        return v.get(
            "active_requests", v.get("sessions_active", 0.0) + v.get("generations_active", 0.0)
        )

    @property
    def rtt_ms(self) -> dict[str, float]:
        """Round trip to each cloud (edges)."""
        return {
            k.removeprefix("rtt_ms:"): v for k, v in self.values.items() if k.startswith("rtt_ms:")
        }

    @property
    def acceptance(self) -> dict[str, float]:
        """Acceptance rate per drafter->target pair (edges)."""
        return {
            k.removeprefix("acceptance:"): v
            for k, v in self.values.items()
            if k.startswith("acceptance:")
        }


def _generation(prompt: str, options: dict[str, Any]) -> Generation:
    """A Generation from keyword options; TypeError for one the client does not know."""
    o = dict(options)
    if o.get("mode") == "edge-only" and not o.get("quality_floor"):
        o["quality_floor"] = "any"  # asking for the drafter alone accepts its quality
    knobs = Knobs(
        mode=Mode(o.pop("mode")) if o.get("mode") else None,
        k_policy=KPolicy.parse(o.pop("k_policy")) if o.get("k_policy") else None,
        draft_length=int(o.pop("draft_length", 0)),
        objective=Objective(o.pop("objective", "latency")),
        quality_floor=QualityFloor(o.pop("quality_floor")) if o.get("quality_floor") else None,
        cost_weight=float(o.pop("cost_weight", 0.0)),
        pipelined=bool(o.pop("pipelined", False)),
    )
    for name in ("mode", "k_policy", "quality_floor"):
        o.pop(name, None)
    gen = Generation(
        prompt=prompt,
        max_tokens=int(o.pop("max_tokens", 0)),
        temperature=float(o.pop("temperature", 0.0)),
        top_p=float(o.pop("top_p", 1.0)),
        seed=int(o.pop("seed", 0)),
        knobs=knobs,
        timeout_s=float(o.pop("timeout_s", 120.0)),
    )
    if o:
        raise TypeError(f"unknown options {sorted(o)}")
    return gen


def _result(done: pb.JobDone) -> Result:
    r, a = done.result, done.result.account
    mode = Mode.from_wire(r.mode)
    account = {
        name: float(getattr(a, name))
        for name in (
            "generated_tokens",
            "drafted_tokens",
            "accepted_tokens",
            "verify_rounds",
            "wall_s",
            "ttft_s",
            "cloud_model_cpu_s",
            "edge_model_s",
            "bytes_sent",
            "bytes_received",
            "prompt_tokens",
        )
    }
    return Result(
        r.text,
        tuple(r.tokens),
        mode.value if mode else "",
        done.edge_id,
        r.cloud_node,
        r.degraded,
        r.note,
        account,
    )


class AsyncClient:
    """The client on asyncio (see the module docstring)."""

    def __init__(self, coordinator: str) -> None:
        self.coordinator = coordinator
        self._channel: grpc.aio.Channel | None = None

    def _stub(self) -> pb_grpc.CoordinatorStub:
        if self._channel is None:
            self._channel = aio_channel(self.coordinator)
        return pb_grpc.CoordinatorStub(self._channel)

    async def stream(self, prompt: str, **options: Any) -> AsyncIterator[Piece]:
        """Text as it is committed, then a piece with the result. Options: max_tokens,
        temperature, top_p, seed, mode, k_policy, draft_length, objective, quality_floor,
        cost_weight, pipelined, edge_id, timeout_s."""
        edge_id = str(options.pop("edge_id", ""))
        gen = _generation(prompt, options)
        call = self._stub().Submit(job_request(gen, edge_id), timeout=gen.timeout_s)
        try:
            async for event in call:
                if event.HasField("done"):
                    yield Piece("", _result(event.done))
                elif event.HasField("progress") and event.progress.text:
                    yield Piece(event.progress.text)
        finally:
            call.cancel()

    async def generate(self, prompt: str, **options: Any) -> Result:
        """The whole generation (options as ``stream``)."""
        async for piece in self.stream(prompt, **options):
            if piece.result is not None:
                return piece.result
        raise RuntimeError("the job ended without a result")

    async def _nodes(self) -> list[pb.NodeInfo]:
        reply = await self._stub().ListNodes(pb.ListNodesRequest(), timeout=10)
        return list(reply.nodes)

    async def reason(
        self,
        question: str,
        strategy: str = "specreason",
        budget: int = 0,
        score_budget: int = 0,
        n: int = 0,
        threshold: float = 0.0,
        seed: int = 0,
        edge_id: str = "",
        timeout_s: float = 120.0,
    ) -> Reasoned:
        """Step speculation or a PRM search for ``question`` on an edge node."""
        edges = [n for n in await self._nodes() if n.role == pb.ROLE_EDGE]
        edges = [e for e in edges if not edge_id or e.node_id == edge_id]
        if not edges:
            raise LookupError(f"no live edge node{' ' + edge_id if edge_id else ''}")
        request = pb.ReasonRequest(
            question=question,
            strategy=strategy,
            token_budget=budget,
            score_budget=score_budget,
            n=n,
            threshold=threshold,
            seed=seed,
        )
        async with aio_channel(edges[0].address) as ch:
            r = await pb_grpc.EdgeStub(ch).Reason(request, timeout=timeout_s)
        a = r.account
        account = {
            name: float(getattr(a, name))
            for name in (
                "drafted_tokens",
                "drafted_steps",
                "accepted_steps",
                "scorer_calls",
                "cloud_tokens",
                "bytes_sent",
                "bytes_received",
                "wall_s",
            )
        }
        return Reasoned(r.answer, tuple(r.steps), r.text, account)

    async def status(self, timeout_s: float = 3.0) -> list[NodeState]:
        """Every live node with its figures (its Metrics RPC), asked concurrently."""
        nodes = await self._nodes()
        return list(await asyncio.gather(*(self._state(n, timeout_s) for n in nodes)))

    @staticmethod
    async def _state(n: pb.NodeInfo, timeout_s: float) -> NodeState:
        state = NodeState(
            n.node_id,
            ROLE_NAMES.get(n.role, "?"),
            n.address,
            tuple(m.name for m in n.models),
            n.device,
        )
        stub: Any = pb_grpc.EdgeStub if n.role == pb.ROLE_EDGE else pb_grpc.CloudStub
        try:
            async with aio_channel(n.address) as ch:
                reply = await stub(ch).Metrics(pb.MetricsRequest(), timeout=timeout_s)
        except grpc.aio.AioRpcError as err:
            return NodeState(**{**state.__dict__, "error": err.code().name})
        return NodeState(**{**state.__dict__, "values": dict(reply.values)})

    async def close(self) -> None:
        """Close the channel."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Client:
    """The synchronous client: an ``AsyncClient`` on a private event loop thread."""

    def __init__(self, coordinator: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._async = AsyncClient(coordinator)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def generate(self, prompt: str, **options: Any) -> Result:
        """See ``AsyncClient.generate``."""
        return self._run(self._async.generate(prompt, **options))

    def stream(self, prompt: str, **options: Any) -> Iterator[Piece]:
        """See ``AsyncClient.stream``."""
        pieces = self._async.stream(prompt, **options)
        try:
            while True:
                try:
                    yield self._run(pieces.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._run(pieces.aclose())

    def reason(self, question: str, **options: Any) -> Reasoned:
        """See ``AsyncClient.reason``."""
        return self._run(self._async.reason(question, **options))

    def status(self, timeout_s: float = 3.0) -> list[NodeState]:
        """See ``AsyncClient.status``."""
        return self._run(self._async.status(timeout_s))

    def close(self) -> None:
        """Close the channel and stop the loop thread."""
        if self._loop.is_closed():
            return
        self._run(self._async.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
