"""Defects of the edge node, each shown on real gRPC servers on 127.0.0.1 with the trained models.

Concurrent searches with a peer edge, admission of Reason, the searches' channels, sizes of
Reason and ProposeSteps, sharing the drafter, enum and cost_weight checks, the plan cache, a
coordinator restart, a quality floor that forbids degrading, and a cloud restart.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Coroutine
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from cloud_node.node import CloudConfig, start_cloud
from edge_node import remote
from edge_node.chunks import ChunkedProposer, plan_chunks
from edge_node.clouds import CloudDirectory, PlanAsk
from edge_node.node import EdgeNode, EdgeNodeConfig, start_edge
from edge_node.service import EdgeConfig
from models import task
from models.reasoning.proposer import LMStepProposer
from models.torch_backend import load_torch
from node_runtime.serving import aio_channel, aio_server, bind
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

TOK = task.WordTokenizer()
QUESTION = "Q 5 + 1 * 2 - 3 ?"


def run(coro: Coroutine[Any, Any, Any], timeout_s: float = 120) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


@dataclass
class Cluster:
    """A cloud (when asked for) and edges, the first one's peers being the others."""

    cloud: Any
    edges: list[EdgeNode]
    stub: pb_grpc.EdgeStub  # to the first edge


@asynccontextmanager
async def cluster(
    peers: int = 0, config: EdgeConfig | None = None, clouds: tuple[str, ...] = ()
) -> AsyncIterator[Cluster]:
    """A real cloud (unless ``clouds`` names others) and 1 + ``peers`` edges."""
    cloud = None if clouds else await start_cloud(load_torch("target"), TOK.eos_id, tokenizer=TOK)
    addresses = clouds or (cloud.address,)
    lm = load_torch("drafter")
    cfg = EdgeNodeConfig(clouds=addresses, edge=config or EdgeConfig())
    edges = [await start_edge(lm, TOK, cfg) for _ in range(1 + peers)]
    edges[0].servicer.clouds.peer_edges = [e.address for e in edges[1:]]
    try:
        async with aio_channel(edges[0].address) as ch:
            yield Cluster(cloud, edges, pb_grpc.EdgeStub(ch))
    finally:
        for e in edges:
            await e.stop()
        if cloud is not None:
            await cloud.stop()


async def _call(coro: Any) -> Any:
    try:
        return await coro
    except grpc.aio.AioRpcError as exc:
        return exc


def test_concurrent_searches_with_a_peer_edge_all_finish() -> None:
    """Searches used to wait for their fan-out on their own 4-thread pool: 4 of them hung."""
    problems = task.generate(6, task.HELDOUT_SEED + 11)
    strategies = ("beam", "dvts", "a_star")

    async def main() -> list[Any]:
        async with cluster(peers=1) as c:
            calls = [
                c.stub.Reason(
                    pb.ReasonRequest(
                        question=p.question, strategy=strategies[i % 3], n=8, m=4, seed=i
                    ),
                    timeout=90,
                )
                for i, p in enumerate(problems)
            ]
            return await asyncio.gather(*calls)

    replies = run(main())
    assert len(replies) == 6 and all(r.steps for r in replies)
    assert all(r.account.bytes_sent > 0 for r in replies)


def test_search_channels_are_shared_and_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each search opened two blocking channels and never closed them."""
    opened: list[grpc.Channel] = []
    closed: list[grpc.Channel] = []
    real = remote.sync_channel

    def recording(target: str, **kwargs: Any) -> grpc.Channel:
        ch = real(target, **kwargs)
        real_close = ch.close

        def close() -> None:
            closed.append(ch)
            real_close()

        ch.close = close  # type: ignore[method-assign]
        opened.append(ch)
        return ch

    monkeypatch.setattr(remote, "sync_channel", recording)
    problems = task.generate(3, task.HELDOUT_SEED + 12)

    async def main() -> list[Any]:
        async with cluster(peers=1) as c:
            return [
                await c.stub.Reason(
                    pb.ReasonRequest(question=p.question, strategy="best_of_n", n=4), timeout=60
                )
                for p in problems
            ]

    replies = run(main())
    assert all(r.answer for r in replies)
    assert len(opened) == 2  # one to the cloud, one to the peer, for every search
    assert closed == opened  # and closed them when it stopped


class BlockingCloud(pb_grpc.CloudServicer):
    """A cloud whose ScoreSteps waits for ``release``; it likes every step."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def ScoreSteps(
        self, request: pb.ScoreRequest, context: grpc.aio.ServicerContext
    ) -> pb.ScoreReply:
        self.entered.set()
        await self.release.wait()
        return pb.ScoreReply(
            items=[pb.StepScores(scores=[0.9] * len(i.steps)) for i in request.items]
        )


def test_reason_counts_toward_max_concurrent() -> None:
    """Reason used to run past max_concurrent; now a request beyond it is RESOURCE_EXHAUSTED."""

    async def main() -> tuple[Any, Any]:
        fake = BlockingCloud()
        server = aio_server()
        pb_grpc.add_CloudServicer_to_server(fake, server)
        address = bind(server, "127.0.0.1", 0)
        await server.start()
        try:
            async with cluster(config=EdgeConfig(max_concurrent=1), clouds=(address,)) as c:
                req = pb.ReasonRequest(question=QUESTION, strategy="specreason")
                first = asyncio.ensure_future(_call(c.stub.Reason(req, timeout=60)))
                await fake.entered.wait()  # the first request is in progress
                second = await _call(c.stub.Reason(req, timeout=10))
                fake.release.set()
                return await first, second
        finally:
            await server.stop(0)

    first, second = run(main())
    assert first.steps  # the request in progress finished
    assert second.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max 1" in second.details()


@pytest.mark.parametrize(
    ("method", "request_", "field_"),
    [
        ("Reason", pb.ReasonRequest(question=QUESTION, strategy="best_of_n", n=100_000), "n"),
        ("Reason", pb.ReasonRequest(question=QUESTION, strategy="beam", m=1000), "m"),
        (
            "Reason",
            pb.ReasonRequest(question=QUESTION, strategy="beam", token_budget=10**9),
            "token_budget",
        ),
        (
            "Reason",
            pb.ReasonRequest(question=QUESTION, strategy="beam", score_budget=10**9),
            "score_budget",
        ),
        (
            "Reason",
            pb.ReasonRequest(question=QUESTION, strategy="specreason", lookahead=10**6),
            "lookahead",
        ),
        (
            "Reason",
            pb.ReasonRequest(question=QUESTION, strategy="specreason", first_cloud_steps=10**6),
            "first_cloud_steps",
        ),
        (
            "ProposeSteps",
            pb.ProposeRequest(question=QUESTION, prefixes=[pb.PartialSolution()] * 128, n=128),
            "n",
        ),
        (
            "ProposeSteps",
            pb.ProposeRequest(question=QUESTION, prefixes=[pb.PartialSolution()] * 128, n=1),
            "prefixes",
        ),
        (
            "ProposeSteps",
            pb.ProposeRequest(question=QUESTION, prefixes=[pb.PartialSolution()] * 64, n=64),
            "n x prefixes",
        ),
        (
            "ProposeSteps",
            pb.ProposeRequest(
                question=QUESTION, prefixes=[pb.PartialSolution()], n=1, temperature=math.nan
            ),
            "temperature",
        ),
    ],
)
def test_oversized_work_is_refused_naming_the_field(
    method: str, request_: Any, field_: str
) -> None:
    async def main() -> tuple[Any, Any, float]:
        async with cluster() as c:
            bad = await _call(getattr(c.stub, method)(request_, timeout=30))
            ok = await c.stub.Reason(
                pb.ReasonRequest(question=QUESTION, strategy="greedy"), timeout=30
            )
            return bad, ok, c.edges[0].servicer.counts["rejected"]

    bad, ok, rejected = run(main())
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad.details().startswith(f"{field_}:")
    assert ok.answer and rejected == 1  # the node kept serving


def test_a_large_proposal_shares_the_drafter_with_a_small_one() -> None:
    """A big ProposeSteps held the single drafter thread until it was done; now it runs in
    chunks, and a small request sent while it runs finishes first."""
    big = pb.ProposeRequest(
        question=QUESTION, prefixes=[pb.PartialSolution()] * 4, n=64, temperature=1.0
    )
    small = pb.ProposeRequest(question=QUESTION, prefixes=[pb.PartialSolution()], n=1)

    async def main() -> tuple[list[str], Any]:
        async with cluster() as c:
            order: list[str] = []

            async def send(name: str, r: pb.ProposeRequest) -> Any:
                reply = await c.stub.ProposeSteps(r, timeout=60)
                order.append(name)
                return reply

            big_call = asyncio.ensure_future(send("big", big))
            while c.edges[0].servicer.active == 0:  # the big one has reached the drafter
                await asyncio.sleep(0.001)
            await send("small", small)
            return order, await big_call

    order, reply = run(main())
    assert order == ["small", "big"]
    assert [len(c.drafts) for c in reply.per_prefix] == [64] * 4
    assert all(d.complete for c in reply.per_prefix for d in c.drafts)


def test_chunks_cover_every_candidate_and_keep_the_token_cap() -> None:
    chunks = plan_chunks(5, 3, seed=7, rows=4)  # 4 // 3: one prefix of 3 per chunk
    assert [c.prefixes for c in chunks] == [(0,), (1,), (2,), (3,), (4,)]
    assert chunks[0].seed == 7 and len({c.seed for c in chunks}) == 5
    assert [(c.prefixes, c.n) for c in plan_chunks(1, 10, 0, 4)] == [
        ((0,), 4),
        ((0,), 4),
        ((0,), 2),
    ]
    prop = LMStepProposer(load_torch("drafter"), TOK)
    pool = ThreadPoolExecutor(1)
    try:
        whole = ChunkedProposer(prop, pool, rows=64)
        direct = prop.propose(QUESTION, [[], []], 3, 0.8, seed=5)
        assert whole.propose(QUESTION, [[], []], 3, 0.8, seed=5) == direct  # one chunk: same
        chunked = ChunkedProposer(prop, pool, rows=2).propose(QUESTION, [[], []], 3, 0.8, 5, 20)
        assert [len(c) for c in chunked] == [3, 3]
        assert sum(d.tokens for c in chunked for d in c) <= 20
        assert not chunked[-1][-1].complete  # the cap ran out before the last candidate
    finally:
        pool.shutdown()


@pytest.mark.parametrize(
    ("request_", "field_"),
    [
        (pb.SolveRequest(prompt=QUESTION, mode=99), "mode"),
        (pb.SolveRequest(prompt=QUESTION, objective=99), "objective"),
        (pb.SolveRequest(prompt=QUESTION, quality_floor=99), "quality_floor"),
        (pb.SolveRequest(prompt=QUESTION, cost_weight=math.nan), "cost_weight"),
        (pb.SolveRequest(prompt=QUESTION, cost_weight=math.inf), "cost_weight"),
        (pb.SolveRequest(prompt=QUESTION, cost_weight=-1.0), "cost_weight"),
        (pb.SolveRequest(prompt=QUESTION, request_id="x" * 1000), "request_id"),
        (
            pb.SolveRequest(
                prompt=QUESTION, mode=pb.MODE_EDGE_ONLY, quality_floor=pb.QUALITY_TARGET
            ),
            "mode",
        ),
    ],
)
def test_undefined_values_are_refused_naming_the_field(request_: Any, field_: str) -> None:
    async def main() -> Any:
        async with cluster() as c:
            return await _call(c.stub.Solve(request_, timeout=30))

    bad = run(main())
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad.details().startswith(f"{field_}:")


@dataclass
class FakeCoordinator(pb_grpc.CoordinatorServicer):
    """Plans everything onto ``cloud`` (none: answers as an empty, just restarted registry)."""

    cloud: pb.NodeInfo | None = None
    plans: int = 0
    seen: set[float] = field(default_factory=set)

    async def Plan(
        self, request: pb.PlanRequest, context: grpc.aio.ServicerContext
    ) -> pb.PlanReply:
        self.plans += 1
        if self.cloud is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no live cloud node")
        return pb.PlanReply(mode=pb.MODE_TOKEN_SPECULATION, draft_length=4, cloud=self.cloud)

    async def PickCloud(
        self, request: pb.PickCloudRequest, context: grpc.aio.ServicerContext
    ) -> pb.PickCloudReply:
        return pb.PickCloudReply(cloud=self.cloud or pb.NodeInfo())

    async def ListNodes(
        self, request: pb.ListNodesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListNodesReply:
        return pb.ListNodesReply(nodes=[self.cloud] if self.cloud else [])


async def _serve_coordinator(fake: FakeCoordinator, port: int = 0) -> tuple[Any, str]:
    server = aio_server()
    pb_grpc.add_CoordinatorServicer_to_server(fake, server)
    address = bind(server, "127.0.0.1", port)
    await server.start()
    return server, address


def test_the_plan_cache_stays_bounded_whatever_the_cost_weights() -> None:
    async def main() -> tuple[int, int]:
        cloud = pb.NodeInfo(node_id="cloud-a", role=pb.ROLE_CLOUD, address="127.0.0.1:1")
        server, address = await _serve_coordinator(FakeCoordinator(cloud))
        clouds = CloudDirectory("edge-a", address)
        try:
            for i in range(clouds.plan_cache_size + 100):
                plan = await clouds.plan_for(PlanAsk(cost_weight=1.0 + i / 1000, max_new=40))
                assert plan is not None and plan.cloud is not None
            return clouds.cached_plans, clouds.plan_cache_size
        finally:
            await clouds.close()
            await server.stop(0)

    cached, size = run(main())
    assert cached == size


def test_a_coordinator_restart_falls_back_to_the_clouds_the_edge_knows() -> None:
    """An edge with a coordinator used to fall back to its fixed cloud list only (empty here),
    so every request around a coordinator restart went edge-only."""

    async def main() -> list[Any]:
        cloud = await start_cloud(load_torch("target"), TOK.eos_id, tokenizer=TOK)
        info = pb.NodeInfo(node_id="cloud-a", role=pb.ROLE_CLOUD, address=cloud.address)
        server, address = await _serve_coordinator(FakeCoordinator(info))
        port = int(address.rsplit(":", 1)[1])
        edge = await start_edge(load_torch("drafter"), TOK, EdgeNodeConfig(coordinator=address))
        out: list[Any] = []
        try:
            async with aio_channel(edge.address) as ch:
                stub = pb_grpc.EdgeStub(ch)
                out.append(await stub.Solve(pb.SolveRequest(prompt=QUESTION), timeout=30))
                await server.stop(0)  # the coordinator restarts with an empty registry
                server, _ = await _serve_coordinator(FakeCoordinator(None), port)
                await edge.servicer.clouds.probe_once()
                for mode in (pb.MODE_UNSPECIFIED, pb.MODE_CLOUD_ONLY, pb.MODE_TOKEN_SPECULATION):
                    r = pb.SolveRequest(prompt=QUESTION, mode=mode, quality_floor=pb.QUALITY_TARGET)
                    out.append(await stub.Solve(r, timeout=30))
        finally:
            await edge.stop()
            await server.stop(0)
            await cloud.stop()
        return out

    replies = run(main())
    assert all(not r.degraded and r.cloud_node == "cloud-a" for r in replies), replies
    assert all(r.text.endswith("A 9") for r in replies)


def test_a_target_quality_floor_fails_rather_than_degrading() -> None:
    async def main() -> list[Any]:
        async with cluster(clouds=("127.0.0.1:1",)) as c:  # port 1: nothing listens
            return [
                await _call(
                    c.stub.Solve(pb.SolveRequest(prompt=QUESTION, quality_floor=floor), timeout=30)
                )
                for floor in (pb.QUALITY_TARGET, pb.QUALITY_ANY)
            ]

    strict, anything = run(main())
    assert strict.code() == grpc.StatusCode.UNAVAILABLE
    assert "quality_floor target" in strict.details() and "127.0.0.1:1" in strict.details()
    assert anything.degraded and anything.mode == pb.MODE_EDGE_ONLY


def test_a_restarted_cloud_is_used_at_once() -> None:
    """The edge's cached channel stayed in gRPC's reconnect backoff after a cloud restart, so
    requests degraded for seconds although the cloud was back."""

    async def main() -> list[Any]:
        target = load_torch("target")
        cloud = await start_cloud(target, TOK.eos_id)
        port = int(cloud.address.rsplit(":", 1)[1])
        edge = await start_edge(load_torch("drafter"), TOK, EdgeNodeConfig(clouds=(cloud.address,)))
        req = pb.SolveRequest(prompt=QUESTION, mode=pb.MODE_TOKEN_SPECULATION)
        out: list[Any] = []
        try:
            async with aio_channel(edge.address) as ch:
                stub = pb_grpc.EdgeStub(ch)
                out.append(await stub.Solve(req, timeout=30))
                await cloud.stop()
                out.append(await stub.Solve(req, timeout=30))  # no cloud: degrades
                cloud = await start_cloud(target, TOK.eos_id, CloudConfig(port=port))
                # wait until it accepts calls, on a channel sharing nothing with the edge's
                own = [("grpc.use_local_subchannel_pool", 1)]
                async with aio_channel(cloud.address, options=own) as fresh:
                    await pb_grpc.CloudStub(fresh).Metrics(
                        pb.MetricsRequest(), timeout=30, wait_for_ready=True
                    )
                out.append(await stub.Solve(req, timeout=30))
        finally:
            await edge.stop()
            await cloud.stop()
        return out

    before, during, after = run(main())
    assert not before.degraded and during.degraded
    assert not after.degraded and after.mode == pb.MODE_TOKEN_SPECULATION
    assert after.text == before.text
