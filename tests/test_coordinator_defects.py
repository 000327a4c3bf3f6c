"""Values the coordinator must refuse, and statuses with messages for every failure.

Each test here failed before its fix: an undefined objective or floor in a job was passed on to
an edge, an infinite cost weight gave a NaN plan cost, a negative cost in telemetry gave a plan
predicting about -38 million ms, and any telemetry endpoint scheme was followed.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import msgpack
import pytest

from coordinator.convert import (
    InvalidField,
    job_from_wire,
    node_from_wire,
    plan_query_from_wire,
    solve_request_to_wire,
)
from coordinator.costmodel import CloudView, EdgeView, Request, candidates
from coordinator.nodes import NodeInfo, NodeLoad, NodeStatus, Role, Snapshot
from coordinator.planner import cloud_view, edge_view, make_plan
from coordinator.service import serve
from node_runtime.kinds import Mode, Objective, QualityFloor
from node_runtime.serving import aio_channel
from node_runtime.telemetry import Reading
from tandem_wire.telemetry_codec import (
    WIRE_VERSION,
    Sample,
    TelemetryDecodeError,
    decode_sample,
    encode_sample,
)
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

Call = Callable[[pb_grpc.CoordinatorStub], Awaitable[Any]]


def status_of(call: Call, setup: Callable[[Any], None] | None = None) -> grpc.aio.AioRpcError:
    """Run ``call`` against a fresh coordinator on 127.0.0.1; the error it raised."""

    async def main() -> grpc.aio.AioRpcError:
        coord, address = await serve()
        if setup is not None:
            setup(coord)
        try:
            async with aio_channel(address) as ch:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call(pb_grpc.CoordinatorStub(ch))
                return err.value
        finally:
            await coord.stop(0)

    return asyncio.run(asyncio.wait_for(main(), 30))


async def _submit(stub: pb_grpc.CoordinatorStub, job: pb.JobRequest) -> None:
    async for _ in stub.Submit(job, timeout=5):
        pass


# ---------------------------------------------------------------- undefined enums


@pytest.mark.parametrize(
    ("field", "job"),
    [
        ("objective", pb.JobRequest(prompt="Q 1 + 2 ?", objective=99)),
        ("quality_floor", pb.JobRequest(prompt="Q 1 + 2 ?", quality_floor=99)),
        ("cost_weight", pb.JobRequest(prompt="Q 1 + 2 ?", cost_weight=math.nan)),
        ("cost_weight", pb.JobRequest(prompt="Q 1 + 2 ?", cost_weight=math.inf)),
    ],
)
def test_a_job_with_an_undefined_value_is_refused_naming_the_field(
    field: str, job: pb.JobRequest
) -> None:
    # Before, the job went on to an edge (here: UNAVAILABLE, no edge), which passed the value on.
    err = status_of(lambda stub: _submit(stub, job))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith(f"{field}:")


@pytest.mark.parametrize(
    ("field", "ask"),
    [
        ("objective", pb.PlanRequest(objective=99)),
        ("quality_floor", pb.PlanRequest(quality_floor=99)),
        ("cost_weight", pb.PlanRequest(objective=pb.OBJECTIVE_MIX, cost_weight=math.inf)),
        ("cost_weight", pb.PlanRequest(cost_weight=math.nan)),
        ("max_new_tokens", pb.PlanRequest(max_new_tokens=-1)),
        ("tokenizer", pb.PlanRequest(tokenizer="no spaces allowed")),
    ],
)
def test_a_plan_request_with_a_bad_value_is_refused_naming_the_field(
    field: str, ask: pb.PlanRequest
) -> None:
    ask.quality_floor = ask.quality_floor or pb.QUALITY_ANY  # edge-only: a plan exists
    err = status_of(lambda stub: stub.Plan(ask, timeout=5))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith(f"{field}:")


def test_an_infinite_cost_weight_never_reaches_the_cost_model() -> None:
    # Before: accepted, and edge-only's cost was latency + inf x 0 = NaN.
    with pytest.raises(InvalidField, match="cost_weight"):
        plan_query_from_wire(pb.PlanRequest(objective=pb.OBJECTIVE_MIX, cost_weight=math.inf))
    with pytest.raises(ValueError, match="cost_weight"):
        Request(10, Objective.MIX, QualityFloor.ANY, cost_weight=math.inf)
    edge = edge_view("e1", None)
    for p in candidates(edge, [], Request(10, Objective.MIX, QualityFloor.ANY, 1e9)):
        assert math.isfinite(p.cost)


# ---------------------------------------------------------------- negative costs in telemetry


def _sample(extra: dict[str, float]) -> Sample:
    return Sample("cloud-1", "cloud", "e0", 0, 1.0, 1.0, Reading(extra=extra))


def test_the_codec_refuses_negative_durations() -> None:
    with pytest.raises(ValueError, match="verify_base_ms"):
        encode_sample(_sample({"verify_base_ms": -38e6}))
    wire = {
        "v": WIRE_VERSION,
        "node_id": "cloud-1",
        "role": "cloud",
        "epoch": "e0",
        "seq": 0,
        "ts": 1.0,
        "mono": 1.0,
        "extra": {"target_ms_per_token": -5.0},
    }
    with pytest.raises(TelemetryDecodeError, match="target_ms_per_token"):
        decode_sample(msgpack.packb(wire))
    # a field that is not a duration may still be negative
    assert decode_sample(encode_sample(_sample({"temperature_delta": -1.0}))).reading.extra


def test_a_negative_cost_that_reaches_the_planner_never_gives_a_negative_prediction() -> None:
    # Before: verify_base_ms = -38e6 from a reading gave a plan predicting -38,438,316 ms.
    info = NodeInfo("cloud-1", Role.CLOUD, "h:1")
    status = NodeStatus(info, NodeLoad(), 0.0, 0.0)
    bad = Reading(
        extra={"verify_base_ms": -38e6, "verify_per_token_ms": -1.0, "target_ms_per_token": -2.0}
    )
    view = cloud_view(status, bad)
    assert view.verify_base_ms >= 0 and view.verify_per_token_ms >= 0
    assert view.target_ms_per_token >= 0
    edge = edge_view("e1", Reading(extra={"draft_ms_per_token": -9.0}))
    assert edge.draft_ms_per_token > 0
    snapshot = Snapshot(0.0, (status,))
    preds, _ = make_plan(snapshot, {"cloud-1": bad}, "e1", Request(40))
    assert preds and all(p.latency_s >= 0 and p.cloud_cpu_s >= 0 for p in preds)


# ---------------------------------------------------------------- telemetry endpoints


@pytest.mark.parametrize(
    "endpoint", ["inproc://coordinator", "ipc:///tmp/x", "garbage", "tcp://host", "h:0", "tcp://"]
)
def test_a_telemetry_endpoint_other_than_tcp_host_port_is_refused(endpoint: str) -> None:
    msg = pb.NodeInfo(role=pb.ROLE_EDGE, address="127.0.0.1:7001", telemetry_address=endpoint)
    with pytest.raises(InvalidField, match="node.telemetry_address"):
        node_from_wire(msg)


@pytest.mark.parametrize("endpoint", ["", "tcp://127.0.0.1:5555", "127.0.0.1:5555", "[::1]:9"])
def test_tcp_and_bare_host_port_endpoints_are_accepted(endpoint: str) -> None:
    msg = pb.NodeInfo(role=pb.ROLE_EDGE, address="127.0.0.1:7001", telemetry_address=endpoint)
    assert node_from_wire(msg).telemetry_address == endpoint


def test_registering_an_inproc_endpoint_answers_invalid_argument() -> None:
    node = pb.NodeInfo(
        role=pb.ROLE_CLOUD, address="127.0.0.1:7001", telemetry_address="inproc://steal"
    )
    err = status_of(lambda stub: stub.Register(pb.RegisterRequest(node=node), timeout=5))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "node.telemetry_address" in err.details()


# ---------------------------------------------------------------- statuses, never UNKNOWN


def test_a_bug_in_planning_answers_internal_with_an_error_id_not_unknown() -> None:
    def broken(coord: Any) -> None:
        def plan(query: Any) -> Any:
            raise KeyError("a bug")

        coord.servicer.scheduler.plan = plan

    err = status_of(lambda stub: stub.Plan(pb.PlanRequest(), timeout=5), broken)
    assert err.code() == grpc.StatusCode.INTERNAL
    assert "KeyError" not in err.details()
    assert "internal error (id" in err.details()


def test_no_cloud_for_a_lossless_plan_is_unavailable_with_the_reason() -> None:
    err = status_of(lambda stub: stub.Plan(pb.PlanRequest(edge_id="e1"), timeout=5))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert "quality floor" in err.details()


# ---------------------------------------------------------------- drafting ahead reaches the plan


def test_a_plan_request_that_insists_on_pipelining_is_planned_pipelined() -> None:
    # Before, PlanRequest.pipelined was dropped at the servicer: plans were always plain.
    query = plan_query_from_wire(pb.PlanRequest(pipelined=True, max_new_tokens=40))
    assert query.request.pipelined and not query.request.allow_pipelined
    assert plan_query_from_wire(pb.PlanRequest(allow_pipelined=True)).request.allow_pipelined
    cloud = CloudView("c", model="t")
    edge = EdgeView("e", rtt_ms={"c": 50.0}, acceptance={"t": 0.9})
    spec = [p for p in candidates(edge, [cloud], query.request) if p.mode is Mode.SPECULATION]
    assert spec and all(p.pipelined for p in spec)


def test_a_job_that_insists_on_pipelining_reaches_the_edge_so() -> None:
    # Before, JobRequest had no such field: a client could not ask a job to draft ahead.
    job = job_from_wire(pb.JobRequest(prompt="Q 1 + 2 ?", pipelined=True))
    assert solve_request_to_wire(job, "j1").pipelined
    plain = job_from_wire(pb.JobRequest(prompt="Q 1 + 2 ?"))
    assert not solve_request_to_wire(plain, "j2").pipelined  # the edge's plan chooses
