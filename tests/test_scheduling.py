"""Plans from the coordinator, the job API and streamed tokens, over real gRPC on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import grpc
import pytest

from cloud_node.node import model_info, start_cloud
from coordinator.service import serve
from edge_node.node import EdgeNodeConfig, start_edge
from models import task
from models.torch_backend import load_torch
from node_runtime.agent import NodeAgent
from node_runtime.serving import aio_channel
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 90))


async def _cluster(with_cloud: bool = True) -> tuple[Any, list[Any], list[NodeAgent], str]:
    coord, caddr = await serve()
    tok = task.WordTokenizer()
    nodes, agents = [], []
    if with_cloud:
        target = load_torch("target")
        cloud = await start_cloud(target, tok.eos_id)
        info = pb.NodeInfo(
            node_id="cloud-a",
            role=pb.ROLE_CLOUD,
            address=cloud.address,
            models=[model_info(target, "torch")],
        )
        agents.append(NodeAgent(caddr, info))
        nodes.append(cloud)
    edge = await start_edge(load_torch("drafter"), tok, EdgeNodeConfig(coordinator=caddr))
    info = pb.NodeInfo(node_id="edge-a", role=pb.ROLE_EDGE, address=edge.address)
    agents.append(NodeAgent(caddr, info))
    nodes.append(edge)
    for a in agents:
        assert await a.start(wait_s=5)
    return coord, nodes, agents, caddr


async def _close(coord: Any, nodes: list[Any], agents: list[NodeAgent]) -> None:
    for a in agents:
        await a.stop()
    for n in nodes:
        await n.stop()
    await coord.stop(0)


def test_an_unplanned_request_follows_the_coordinators_plan_and_streams_tokens() -> None:
    async def main() -> tuple[list[pb.SolveEvent], pb.PlanReply]:
        coord, nodes, agents, caddr = await _cluster()
        edge = nodes[-1]
        problem = task.generate(1, task.HELDOUT_SEED)[0]
        try:
            async with aio_channel(edge.address) as ch:
                req = pb.SolveRequest(prompt=problem.question, max_new_tokens=48)
                events = [e async for e in pb_grpc.EdgeStub(ch).SolveStream(req, timeout=30)]
            async with aio_channel(caddr) as ch:
                plan = await pb_grpc.CoordinatorStub(ch).Plan(
                    pb.PlanRequest(edge_id=edge.servicer.node_id, max_new_tokens=40), timeout=5
                )
        finally:
            await _close(coord, nodes, agents)
        return events, plan

    events, plan = run(main())
    *progress, last = events
    assert progress and all(e.tokens for e in progress)
    streamed = [t for e in progress for t in e.tokens]
    assert streamed == list(last.done.tokens)
    assert last.done.mode in (pb.MODE_CLOUD_ONLY, pb.MODE_TOKEN_SPECULATION)
    assert not last.done.degraded and last.done.cloud_node == "cloud-a"
    assert plan.cloud.node_id == "cloud-a" and plan.reason
    assert plan.mode in (pb.MODE_CLOUD_ONLY, pb.MODE_TOKEN_SPECULATION)
    assert {c.mode for c in plan.candidates} == {pb.MODE_CLOUD_ONLY, pb.MODE_TOKEN_SPECULATION}


def test_the_job_api_runs_a_job_on_an_edge_and_reports_where() -> None:
    async def main() -> tuple[list[pb.JobEvent], str]:
        coord, nodes, agents, caddr = await _cluster()
        problem = task.generate(2, task.HELDOUT_SEED)[1]
        try:
            async with aio_channel(caddr) as ch:
                job = pb.JobRequest(
                    prompt=problem.question, objective=pb.OBJECTIVE_CLOUD_COST, deadline_s=30
                )
                events = [e async for e in pb_grpc.CoordinatorStub(ch).Submit(job, timeout=30)]
                return events, nodes[-1].address
        finally:
            await _close(coord, nodes, agents)

    events, edge_address = run(main())
    done = events[-1].done
    assert done.edge_id == edge_address  # the one live edge ran it
    assert all(e.HasField("progress") for e in events[:-1]) and len(events) > 1
    assert done.result.mode == pb.MODE_TOKEN_SPECULATION  # the cheapest mode in cloud compute
    assert task.is_correct(task.generate(2, task.HELDOUT_SEED)[1], done.result.text)
    assert done.result.account.cloud_model_cpu_s > 0


def test_plans_respect_the_quality_floor_without_clouds() -> None:
    async def main() -> tuple[pb.PlanReply, grpc.aio.AioRpcError]:
        coord, nodes, agents, caddr = await _cluster(with_cloud=False)
        try:
            async with aio_channel(caddr) as ch:
                stub = pb_grpc.CoordinatorStub(ch)
                anything = await stub.Plan(
                    pb.PlanRequest(edge_id="edge-a", quality_floor=pb.QUALITY_ANY), timeout=5
                )
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.Plan(pb.PlanRequest(edge_id="edge-a"), timeout=5)
                with pytest.raises(grpc.aio.AioRpcError) as bad:
                    await stub.Plan(pb.PlanRequest(edge_id="edge-a", objective=77), timeout=5)
                assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "objective" in bad.value.details()
        finally:
            await _close(coord, nodes, agents)
        return anything, err.value

    anything, err = run(main())
    assert anything.mode == pb.MODE_EDGE_ONLY
    assert err.code() == grpc.StatusCode.UNAVAILABLE and "quality floor" in err.details()


def test_edges_serve_a_stale_plan_while_they_fetch_a_fresh_one() -> None:
    async def main() -> tuple[float, float, float]:
        coord, nodes, agents, _ = await _cluster()
        clouds = nodes[-1].servicer.clouds
        ask = pb.PlanRequest(edge_id="edge-a", max_new_tokens=40)
        clouds.rtt_ms["cloud-a"] = 1.0
        try:
            first = await clouds.plan(ask)
            counts = coord.servicer.scheduler.counts
            after_first = counts["plans_total"]
            clouds.plan_ttl_s = 0.0  # every cached plan is now stale
            again = await clouds.plan(ask)  # served from memory, refreshed behind the scenes
            assert again is first
            for _ in range(100):
                if counts["plans_total"] > after_first:
                    break
                await asyncio.sleep(0.01)
            refreshed = counts["plans_total"]
            await clouds.plan(ask, fresh=True)
            clouds.plan_ttl_s = 60.0
            clouds.rtt_ms["cloud-a"] = 20.0  # the link changed: the cached plan is for another one
            before = counts["plans_total"]
            await clouds.plan(ask)
            assert counts["plans_total"] == before + 1  # fetched at once, not served stale
            return after_first, refreshed, before
        finally:
            await _close(coord, nodes, agents)

    after_first, refreshed, fresh = run(main())
    assert after_first == 1 and refreshed == 2 and fresh == 3


def test_the_edge_drafts_ahead_when_the_plan_chooses_it_and_a_job_can_insist() -> None:
    async def main() -> tuple[pb.PlanReply, pb.PlanReply, pb.SolveReply, pb.SolveReply]:
        coord, nodes, agents, caddr = await _cluster()
        edge = nodes[-1]
        problems = task.generate(2, task.HELDOUT_SEED)
        try:
            async with aio_channel(caddr) as ch:
                stub = pb_grpc.CoordinatorStub(ch)
                ask = pb.PlanRequest(
                    edge_id="edge-a", max_new_tokens=48, objective=pb.OBJECTIVE_CLOUD_COST
                )
                plain = await stub.Plan(ask, timeout=5)
                ask.allow_pipelined = True
                chosen = await stub.Plan(ask, timeout=5)
                job = pb.JobRequest(
                    prompt=problems[1].question,
                    objective=pb.OBJECTIVE_CLOUD_COST,
                    pipelined=True,
                    deadline_s=30,
                )
                events = [e async for e in stub.Submit(job, timeout=30)]
            async with aio_channel(edge.address) as ch:
                req = pb.SolveRequest(
                    prompt=problems[0].question,
                    max_new_tokens=48,
                    objective=pb.OBJECTIVE_CLOUD_COST,
                )
                planned = await pb_grpc.EdgeStub(ch).Solve(req, timeout=30)
        finally:
            await _close(coord, nodes, agents)
        return plain, chosen, planned, events[-1].done.result

    plain, chosen, planned, forced = run(main())
    # same cloud compute, less latency: where allowed, the plan drafts ahead
    assert plain.mode == chosen.mode == pb.MODE_TOKEN_SPECULATION
    assert not plain.pipelined and chosen.pipelined
    assert planned.mode == pb.MODE_TOKEN_SPECULATION
    assert planned.account.ahead_rounds > 0  # the edge followed the plan (before: always plain)
    assert forced.mode == pb.MODE_TOKEN_SPECULATION and forced.account.ahead_rounds > 0
    assert task.is_correct(task.generate(2, task.HELDOUT_SEED)[1], forced.text)
