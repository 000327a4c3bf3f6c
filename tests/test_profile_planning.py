"""The scheduler plans with device profiles as its prior: a node that registers with a profile is
predicted from it until its telemetry measures the figures, and measured figures win."""

from __future__ import annotations

import asyncio

import pytest

from coordinator.costmodel import CloudView, EdgeView, Request, predict
from coordinator.nodes import ModelSpec, NodeInfo, NodeLoad, NodeStatus, Role, Snapshot
from coordinator.planner import PROFILE_CONTEXT_TOKENS, cloud_view, edge_view, make_plan
from coordinator.service import serve
from node_runtime.kinds import Mode, Objective
from node_runtime.profiles import CallKind, cost_ms, draft_ms_per_token, get_profile
from node_runtime.serving import aio_channel
from node_runtime.telemetry import Reading
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

A100X4 = "a100x4/llama3-70b-bf16"
PI5 = "rpi5/smollm2-135m-q8"
CTX = PROFILE_CONTEXT_TOKENS


def status(node_id: str, role: Role, device: str, sessions: int = 0) -> NodeStatus:
    info = NodeInfo(
        node_id,
        role,
        "127.0.0.1:1",
        models=(ModelSpec("target"),) if role is Role.CLOUD else (),
        device=device,
        tokenizer="tok",
    )
    return NodeStatus(info, NodeLoad(active_sessions=sessions), 0.0, 0.0)


def test_a_cloud_on_a_profile_is_priced_by_it_before_any_telemetry() -> None:
    p = get_profile(A100X4)
    view = cloud_view(status("c", Role.CLOUD, A100X4), None)
    decode = cost_ms(p, CallKind.DECODE, 1, 1, CTX)
    assert view.target_ms_per_token == pytest.approx(decode)
    assert decode > 20.0  # a 70B decode on 4 A100s, not the 2 ms prior of the bundled target
    for k in (1, 4, 8):
        assert view.verify_pass_ms(k) == pytest.approx(cost_ms(p, CallKind.VERIFY, 1, k + 1, CTX))
    assert CloudView("c").target_ms_per_token < decode / 10  # what it was planned with before


def test_the_profile_is_priced_at_the_batch_the_cloud_serves_now() -> None:
    p = get_profile(A100X4)
    view = cloud_view(status("c", Role.CLOUD, A100X4, sessions=32), None)
    verify = cost_ms(p, CallKind.VERIFY, 32, 5, CTX)  # 32 sequences of k + 1 = 5 tokens
    assert view.verify_pass_ms(4) == pytest.approx(verify)
    assert verify > cost_ms(p, CallKind.VERIFY, 1, 5, CTX)  # 160 tokens: past the compute limit
    edge = EdgeView("e", tokenizer="tok")
    # a round waits for the whole pass, but pays only its share of the cloud's device time
    spec = predict(edge, view, Mode.SPECULATION, 4, 100)
    single = predict(
        edge, cloud_view(status("c", Role.CLOUD, A100X4), None), Mode.SPECULATION, 4, 100
    )
    assert spec.latency_s > single.latency_s and spec.cloud_cpu_s < single.cloud_cpu_s


def test_an_edge_on_a_profile_drafts_at_its_cost_until_it_measures_its_own() -> None:
    want = draft_ms_per_token(get_profile(PI5), CTX)
    assert edge_view("e", None, "tok", PI5).draft_ms_per_token == pytest.approx(want)
    assert edge_view("e", Reading(), "tok", PI5).draft_ms_per_token == pytest.approx(want)
    measured = Reading(extra={"draft_ms_per_token": 3.0})
    assert edge_view("e", measured, "tok", PI5).draft_ms_per_token == 3.0
    assert edge_view("e", None, "tok", "cpu").draft_ms_per_token == EdgeView.draft_ms_per_token


def test_measured_cloud_figures_win_over_the_profile() -> None:
    reading = Reading(
        active_sessions=32,
        extra={"target_ms_per_token": 30.0, "verify_base_ms": 40.0, "verify_per_token_ms": 1.0},
    )
    view = cloud_view(status("c", Role.CLOUD, A100X4, sessions=32), reading)
    assert view.target_ms_per_token == 30.0 and view.batch == 1
    assert view.verify_pass_ms(4) == 45.0  # the measured line, not the profile's table
    # verify measured, decode not yet: the profile still prices decode (at batch 1, as measured)
    partial = Reading(extra={"verify_base_ms": 40.0, "verify_per_token_ms": 1.0})
    view = cloud_view(status("c", Role.CLOUD, A100X4, sessions=32), partial)
    p = get_profile(A100X4)
    assert view.target_ms_per_token == pytest.approx(cost_ms(p, CallKind.DECODE, 1, 1, CTX))


def test_plans_from_profiles_change_with_the_devices() -> None:
    # Before any telemetry: a 70B target on 4 A100s and a Pi 5 drafter 50 ms away (the default).
    snap = Snapshot(0.0, (status("c", Role.CLOUD, A100X4), status("e", Role.EDGE, PI5)))
    preds, _ = make_plan(snap, {}, "e", Request(100), tokenizer="tok")
    cloud_only = next(p for p in preds if p.mode is Mode.CLOUD_ONLY)
    decode = cost_ms(get_profile(A100X4), CallKind.DECODE, 1, 1, CTX)
    assert cloud_only.latency_s == pytest.approx((50.0 + 100 * decode) / 1e3)
    assert cloud_only.cloud_cpu_s == pytest.approx(100 * decode / 1e3)
    # The same nodes without profiles are planned with the priors: a 2 ms target.
    bare = Snapshot(0.0, (status("c", Role.CLOUD, "cpu"), status("e", Role.EDGE, "cpu")))
    prior, _ = make_plan(bare, {}, "e", Request(100), tokenizer="tok")
    assert next(p for p in prior if p.mode is Mode.CLOUD_ONLY).latency_s < 0.3


def test_the_coordinator_plans_a_registered_profile_over_grpc() -> None:
    async def main() -> tuple[pb.PlanReply, pb.PlanReply]:
        coord, address = await serve()
        try:
            async with aio_channel(address) as ch:
                stub = pb_grpc.CoordinatorStub(ch)
                model = pb.ModelInfo(name="target")
                for node_id, role, device, models, port in (
                    ("cloud-a", pb.ROLE_CLOUD, A100X4, [model], 1),
                    ("edge-a", pb.ROLE_EDGE, PI5, [], 2),
                ):
                    node = pb.NodeInfo(
                        node_id=node_id,
                        role=role,
                        address=f"127.0.0.1:{port}",  # never dialled: plans need no call
                        models=models,
                        device=device,
                        tokenizer="tok",
                    )
                    await stub.Register(pb.RegisterRequest(node=node), timeout=5)
                latency = await stub.Plan(
                    pb.PlanRequest(edge_id="edge-a", max_new_tokens=100), timeout=5
                )
                cheap = await stub.Plan(
                    pb.PlanRequest(
                        edge_id="edge-a",
                        max_new_tokens=100,
                        objective=Objective.CLOUD_COST.to_wire(),
                        allow_pipelined=True,
                    ),
                    timeout=5,
                )
                return latency, cheap
        finally:
            await coord.stop(0)

    latency, cheap = asyncio.run(asyncio.wait_for(main(), 30))
    decode = cost_ms(get_profile(A100X4), CallKind.DECODE, 1, 1, CTX)
    cloud_only = next(c for c in latency.candidates if c.mode == pb.MODE_CLOUD_ONLY)
    assert cloud_only.cloud_cpu_s == pytest.approx(100 * decode / 1e3)
    assert not any(c.pipelined for c in latency.candidates)  # not allowed: plain only
    assert cheap.mode == pb.MODE_TOKEN_SPECULATION and cheap.pipelined
    assert "pipelined" in cheap.reason
