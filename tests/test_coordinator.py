"""Coordinator: registry expiry on a fake clock, the pick policy, the gRPC service and NodeAgent."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import until

from coordinator.nodes import ModelSpec, NodeInfo, NodeLoad, NodeStatus, Role, Snapshot
from coordinator.policy import POLICIES, pick_cloud, why_none
from coordinator.registry import CoordinatorConfig, Registry, RegistryFull
from coordinator.service import serve
from node_runtime.agent import NodeAgent
from node_runtime.serving import aio_channel
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[1]


class FakeClock:
    """Time that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def cloud(node_id: str = "", address: str = "10.0.0.1:7000", models=("tiny",), cap=4) -> NodeInfo:
    return NodeInfo(
        node_id, Role.CLOUD, address, tuple(ModelSpec(m) for m in models), max_sessions=cap
    )


def wire_node(role=pb.ROLE_CLOUD, address="127.0.0.1:7001", models=("tiny",), node_id=""):
    return pb.NodeInfo(
        node_id=node_id, role=role, address=address, models=[pb.ModelInfo(name=m) for m in models]
    )


# ---------------------------------------------------------------- registry (pure)


def test_registry_expires_after_missed_heartbeats_and_reports_it():
    clock, expired = FakeClock(), []
    reg = Registry(CoordinatorConfig(heartbeat_interval_s=1.0), clock, on_expire=expired.append)
    a = reg.register(cloud(address="h:1")).node
    b = reg.register(cloud(address="h:2")).node
    assert a.node_id.startswith("cloud-") and a.node_id != b.node_id
    clock.now += 2.5
    assert reg.heartbeat(a.node_id, NodeLoad(queue_depth=2))
    clock.now += 0.6  # b silent for 3.1 intervals, a for 0.6
    assert [n.info.node_id for n in reg.snapshot().nodes] == [a.node_id]
    assert [s.info.node_id for s in expired] == [b.node_id]
    assert not reg.heartbeat(b.node_id, NodeLoad())  # unknown: the node must register again
    assert reg.get(a.node_id).load.queue_depth == 2
    clock.now += 3.0  # exactly three intervals is not yet a miss
    assert len(reg) == 1
    clock.now += 0.01
    assert len(reg.snapshot().nodes) == 0
    m = reg.metrics()
    assert m["expirations_total"] == 2 and m["unknown_heartbeats_total"] == 1
    assert m["registrations_total"] == 2 and m["nodes"] == 0


def test_registry_reregister_updates_and_keeps_given_id():
    clock = FakeClock()
    reg = Registry(CoordinatorConfig(), clock)
    first = reg.register(cloud("cloud-keep", address="h:1"))
    assert first.new and first.node.node_id == "cloud-keep"  # an id from before a restart is kept
    again = reg.register(cloud("cloud-keep", address="h:1", models=("big",)))
    assert not again.new and reg.get("cloud-keep").info.models == (ModelSpec("big"),)
    # A node that lost its id and registers at the same address replaces the stale entry.
    fresh = reg.register(cloud(address="h:1"))
    assert fresh.replaced[0].node_id == "cloud-keep" and len(reg) == 1
    assert reg.deregister(fresh.node.node_id) and not reg.deregister(fresh.node.node_id)
    m = reg.metrics()
    assert m["reregistrations_total"] == 1 and m["replacements_total"] == 1
    assert m["deregistrations_total"] == 1


def test_registry_is_bounded():
    reg = Registry(CoordinatorConfig(max_nodes=2), FakeClock())
    reg.register(cloud("c1", address="h:1"))
    reg.register(NodeInfo("e1", Role.EDGE, "h:2"))
    with pytest.raises(RegistryFull, match="max_nodes=2"):
        reg.register(cloud("c3", address="h:3"))
    reg.register(cloud("c1", address="h:1"))  # a known node may always re-register
    assert reg.metrics()["nodes_cloud"] == 1 and reg.metrics()["nodes_edge"] == 1


def test_config_rejects_nonsense():
    with pytest.raises(ValueError, match="heartbeat_interval_s"):
        CoordinatorConfig(heartbeat_interval_s=0)
    with pytest.raises(ValueError, match="max_nodes"):
        CoordinatorConfig(max_nodes=0)


# ---------------------------------------------------------------- policy (pure)


def status(info: NodeInfo, **load: float) -> NodeStatus:
    return NodeStatus(info, NodeLoad(**load), last_seen=0.0, registered_at=0.0)


def test_pick_least_loaded_by_queue_then_sessions_then_busy():
    snap = Snapshot(
        0.0,
        (
            status(cloud("c-queue", address="h:1"), queue_depth=3),
            status(cloud("c-full", address="h:2", cap=2), active_sessions=2),
            status(cloud("c-half", address="h:3", cap=4), active_sessions=2),
            status(cloud("c-busy", address="h:4", cap=4), active_sessions=1, busy_fraction=0.9),
            status(cloud("c-idle", address="h:5", cap=4), active_sessions=1, busy_fraction=0.1),
            status(cloud("c-other", address="h:6", models=("big",))),
            status(NodeInfo("e-1", Role.EDGE, "h:7", (ModelSpec("tiny"),))),
        ),
    )
    assert pick_cloud(snap, "e-1", "tiny").node_id == "c-idle"
    assert pick_cloud(snap, "e-1", "tiny", exclude={"c-idle"}).node_id == "c-busy"
    assert pick_cloud(snap, "e-1", "big").node_id == "c-other"
    assert pick_cloud(snap, "e-1", "").node_id == "c-other"  # any model: the idle one
    assert pick_cloud(snap, "e-1", "huge") is None
    assert "serves model 'huge'" in why_none(snap, "huge", ())
    assert "excluded" in why_none(snap, "big", {"c-other"})
    assert why_none(Snapshot(0.0, ()), "", ()) == "no live cloud node is registered"
    # Saturated nodes come last, even when their queue is empty.
    only = Snapshot(0.0, (snap.nodes[0], snap.nodes[1]))
    assert pick_cloud(only, "e-1", "tiny").node_id == "c-queue"
    assert set(POLICIES) == {"least_loaded"}


def test_pick_spreads_edges_over_equally_idle_clouds():
    snap = Snapshot(0.0, tuple(status(cloud(f"c{i}", address=f"h:{i + 1}")) for i in range(4)))
    chosen = {pick_cloud(snap, f"edge-{e}", "tiny").node_id for e in range(40)}
    assert len(chosen) > 1  # loads lag a heartbeat, so ties must not send every edge to one node
    assert pick_cloud(snap, "edge-1", "tiny") == pick_cloud(snap, "edge-1", "tiny")


# ---------------------------------------------------------------- gRPC service


@contextlib.asynccontextmanager
async def running_coordinator(config: CoordinatorConfig, port: int = 0):
    """A real coordinator on 127.0.0.1 and a stub to it; always stopped, even on failure."""
    coord, address = await serve("127.0.0.1", port, config)
    try:
        async with aio_channel(address) as channel:
            yield coord, pb_grpc.CoordinatorStub(channel), channel
    finally:
        await coord.stop(0)


async def rpc_error(call) -> grpc.aio.AioRpcError:
    """The error an RPC call fails with; the test fails if it succeeds."""
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err
    raise AssertionError("the RPC succeeded")


def test_service_register_heartbeat_list_pick_deregister():
    async def main():
        async with running_coordinator(CoordinatorConfig()) as (coord, stub, channel):
            reply = await stub.Register(pb.RegisterRequest(node=wire_node()), timeout=5)
            assert reply.node_id and reply.heartbeat_interval_s == 1.0
            edge_node = wire_node(pb.ROLE_EDGE, "127.0.0.1:7002")
            edge = await stub.Register(pb.RegisterRequest(node=edge_node), timeout=5)
            load = pb.NodeLoad(active_sessions=1, busy_fraction=0.5)
            beat = pb.HeartbeatRequest(node_id=reply.node_id, load=load)
            assert (await stub.Heartbeat(beat, timeout=5)).known
            unknown = await stub.Heartbeat(pb.HeartbeatRequest(node_id="nobody"), timeout=5)
            assert not unknown.known
            listed = await stub.ListNodes(pb.ListNodesRequest(), timeout=5)
            assert {n.node_id for n in listed.nodes} == {reply.node_id, edge.node_id}
            ask = pb.PickCloudRequest(edge_id=edge.node_id, model="tiny")
            picked = (await stub.PickCloud(ask, timeout=5)).cloud
            assert picked.node_id == reply.node_id and picked.address == "127.0.0.1:7001"
            assert picked.role == pb.ROLE_CLOUD and picked.models[0].name == "tiny"
            gone = await stub.Deregister(pb.DeregisterRequest(node_id=reply.node_id), timeout=5)
            assert gone.removed
            m = coord.metrics()
            assert m["nodes_edge"] == 1 and m["nodes_cloud"] == 0
            assert m["registrations_total"] == 2 and m["picks_total"] == 1

    asyncio.run(asyncio.wait_for(main(), 10))


def test_health_service_answers_serving():
    async def main():
        async with running_coordinator(CoordinatorConfig()) as (_, _, channel):
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "tandem_wire.v1.Coordinator"):
                ask = health_pb2.HealthCheckRequest(service=service)
                check = await health.Check(ask, timeout=5)
                assert check.status == health_pb2.HealthCheckResponse.SERVING

    asyncio.run(asyncio.wait_for(main(), 10))


BAD_REQUESTS = [
    ("Register", pb.RegisterRequest(), "node"),
    ("Register", pb.RegisterRequest(node=wire_node(address="")), "node.address"),
    ("Register", pb.RegisterRequest(node=wire_node(address="nohost")), "node.address"),
    ("Register", pb.RegisterRequest(node=wire_node(address="h:99999")), "node.address"),
    ("Register", pb.RegisterRequest(node=wire_node(pb.ROLE_UNSPECIFIED)), "node.role"),
    ("Register", pb.RegisterRequest(node=wire_node(models=("",))), "node.models[0].name"),
    ("Register", pb.RegisterRequest(node=wire_node(node_id="a b")), "node.node_id"),
    ("Heartbeat", pb.HeartbeatRequest(), "node_id"),
    (
        "Heartbeat",
        pb.HeartbeatRequest(node_id="x", load=pb.NodeLoad(busy_fraction=2)),
        "load.busy_fraction",
    ),
    (
        "Heartbeat",
        pb.HeartbeatRequest(node_id="x", load=pb.NodeLoad(queue_depth=-1)),
        "load.queue_depth",
    ),
    ("Deregister", pb.DeregisterRequest(), "node_id"),
    ("PickCloud", pb.PickCloudRequest(exclude=[""]), "exclude[0]"),
]


def test_service_rejects_bad_input_naming_the_field():
    async def main():
        async with running_coordinator(CoordinatorConfig(max_nodes=1)) as (_, stub, _):
            for method, request, field in BAD_REQUESTS:
                err = await rpc_error(getattr(stub, method)(request, timeout=5))
                assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, field
                assert err.details().startswith(f"{field}:"), (field, err.details())

            err = await rpc_error(stub.PickCloud(pb.PickCloudRequest(model="tiny"), timeout=5))
            assert err.code() == grpc.StatusCode.UNAVAILABLE
            assert err.details() == "no live cloud node is registered"
            await stub.Register(pb.RegisterRequest(node=wire_node()), timeout=5)
            err = await rpc_error(stub.PickCloud(pb.PickCloudRequest(model="huge"), timeout=5))
            assert err.code() == grpc.StatusCode.UNAVAILABLE
            assert "no live cloud node serves model 'huge'" in err.details()

            full = pb.RegisterRequest(node=wire_node(address="127.0.0.1:7009"))
            err = await rpc_error(stub.Register(full, timeout=5))
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_nodes=1" in err.details()

    asyncio.run(asyncio.wait_for(main(), 10))


def test_service_expires_silent_nodes():
    async def main():
        config = CoordinatorConfig(heartbeat_interval_s=0.1)
        async with running_coordinator(config) as (coord, stub, _):
            await stub.Register(pb.RegisterRequest(node=wire_node()), timeout=5)
            await asyncio.sleep(0.5)  # > 3 intervals; the sweeper runs every 0.05 s
            assert coord.metrics()["expirations_total"] == 1  # swept without any RPC asking
            listed = await stub.ListNodes(pb.ListNodesRequest(), timeout=5)
            assert list(listed.nodes) == []

    asyncio.run(asyncio.wait_for(main(), 10))


# ---------------------------------------------------------------- NodeAgent


async def listed_ids(address: str) -> set[str]:
    async with aio_channel(address) as channel:
        reply = await pb_grpc.CoordinatorStub(channel).ListNodes(pb.ListNodesRequest(), timeout=2)
    return {n.node_id for n in reply.nodes}


# Liveness bound for re-registration (a few heartbeats on an idle machine).
LISTED_WITHIN_S = 10.0


async def wait_listed(address: str, node_id: str, within_s: float) -> float:
    """Seconds until ``node_id`` is listed; fails after ``within_s`` + 1 s of slack."""
    start = time.monotonic()
    while node_id not in await listed_ids(address):
        assert time.monotonic() - start < within_s + 1.0, f"{node_id} never listed"
        await asyncio.sleep(0.01)
    return time.monotonic() - start


def test_agent_survives_coordinator_restart_on_the_same_port():
    interval = 0.2

    async def main():
        config = CoordinatorConfig(heartbeat_interval_s=interval)
        coord, address = await serve("127.0.0.1", 0, config)
        port = int(address.rsplit(":", 1)[1])
        agent = NodeAgent(
            address,
            wire_node(address="127.0.0.1:7100"),
            lambda: pb.NodeLoad(active_sessions=1),
            heartbeat_interval_s=5.0,  # replaced by the coordinator's interval on registration
        )
        try:
            assert await agent.start(wait_s=3)
            node_id = agent.node_id
            assert node_id and agent.heartbeat_interval_s == interval
            await asyncio.sleep(2.5 * interval)
            assert coord.metrics()["heartbeats_total"] >= 1
            assert (await agent.pick_cloud("tiny")).node_id == node_id

            await coord.stop(0)
            await asyncio.sleep(3 * interval)  # the agent fails and backs off, without raising
            assert await agent.pick_cloud("tiny") is None
            assert agent.last_error.startswith("UNAVAILABLE") and agent.counts["failures"] >= 1

            coord, _ = await serve("127.0.0.1", port, config)
            # Back by itself; how fast (2 heartbeats when idle) is not a wall-clock assert on a
            # shared machine, so the bound is one a loaded 2-core runner meets.
            registrations = agent.counts["registrations"]
            await wait_listed(address, node_id, LISTED_WITHIN_S)
            # a Register the coordinator applied can still time out at the agent, which then
            # registers again: the count follows the listing, not necessarily at once
            await until(lambda: agent.counts["registrations"] > registrations, "re-registered")
            assert agent.counts["registrations"] == registrations + 1

            # Forgotten while both run: the next heartbeat gets known=false, the agent registers
            # again under the same id.
            registrations = agent.counts["registrations"]
            async with aio_channel(address) as channel:
                stub = pb_grpc.CoordinatorStub(channel)
                await stub.Deregister(pb.DeregisterRequest(node_id=node_id), timeout=2)
            await wait_listed(address, node_id, LISTED_WITHIN_S)
            # a Register the coordinator applied can still time out at the agent, which then
            # registers again: the count follows the listing, not necessarily at once
            await until(lambda: agent.counts["registrations"] > registrations, "re-registered")
            assert agent.counts["registrations"] == registrations + 1

            await agent.stop()
            assert node_id not in await listed_ids(address)  # deregistered on stop
        finally:
            await agent.stop(deregister=False)
            await coord.stop(0)

    asyncio.run(asyncio.wait_for(main(), 15))


def test_agent_start_with_coordinator_down_does_not_raise():
    async def main():
        agent = NodeAgent("127.0.0.1:1", wire_node(), heartbeat_interval_s=0.1)
        assert await agent.start(wait_s=0.3) is False
        assert agent.counts["failures"] >= 1 and agent.last_error
        await agent.stop()  # deregister is skipped: it never had an id

    asyncio.run(asyncio.wait_for(main(), 5))


# ---------------------------------------------------------------- process entry and layering


def test_run_coordinator_writes_ready_file_and_stops_on_sigterm(tmp_path):
    ready = tmp_path / "coordinator.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "proto")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "coordinator", "--ready-file", str(ready)],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 10
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "coordinator not ready"
            time.sleep(0.02)
        info = json.loads(ready.read_text())
        assert info["pid"] == proc.pid and info["address"].startswith("127.0.0.1:")
        assert asyncio.run(listed_ids(info["address"])) == set()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    events = [json.loads(line)["event"] for line in err.splitlines() if line.startswith("{")]
    assert "coordinator_listening" in events and "coordinator_stopped" in events
    assert not ready.exists()
