"""The chaos suite's fast subset, on real processes (coordinator, two clouds, an edge) started as
``tandem up`` starts them: a cloud killed mid-stream, a frozen cloud found by keepalive, a
cancelled request freeing its sessions, a graceful stop draining. Every request must complete
(failing over, and saying so) or fail with a clean status before its deadline; the requests the
fault hit are established from the nodes' own accounts."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cloud_node.node import start_cloud
from node_runtime import tls_watch
from node_runtime.serving import aio_channel
from tandem.chaos.cluster import ChaosCluster
from tandem.chaos.faults import (
    EDGE,
    VICTIM,
    Env,
    FaultResult,
    freeze_cloud,
    graceful_stop,
    health_of,
    kill_cloud,
    metric,
    sessions_idle,
    wait_for,
)
from tandem.chaos.load import Load
from tandem.chaos.timings import cancel_once
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

DETECT_LIMIT_S = 10.0  # liveness, not speed: keepalive finds a frozen peer long before this


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    workdir = tmp_path_factory.mktemp("chaos")
    with ChaosCluster(workdir) as cluster:
        coord = cluster.launch("coordinator", "coordinator")
        for name in ("cloud-a", "cloud-b"):
            cluster.launch(
                "cloud",
                name,
                "--model",
                "target",
                "--coordinator",
                coord.address,
                "--node-id",
                name,
            )
        cluster.launch("edge", EDGE, "--coordinator", coord.address, "--node-id", EDGE)
        load = Load(max_new=48, deadline_s=20.0)
        e = Env(cluster, load, {}, clients=3, outage_s=1.0, settle_s=1.0)

        async def warm() -> bool:
            rec = await load.one(EDGE, e.address(EDGE))
            return rec.outcome == "ok"

        assert asyncio.run(wait_for(warm, 30.0)) is not None, "the cluster never served"
        load.records.clear()
        yield e


def _run(env: Env, scenario, name: str) -> FaultResult:  # type: ignore[no-untyped-def]
    res = FaultResult(name, 0, 0.0)
    asyncio.run(scenario(env, res))
    return res


def _mine(env: Env, res: FaultResult) -> list:  # type: ignore[type-arg]
    return [r for r in env.load.records if r.scenario == f"{res.scenario}#0"]


def test_kill9_cloud_mid_stream_loses_nothing_and_records_the_hit(env: Env) -> None:
    # Requests last about 50 ms, so on a loaded machine the kill can land between them: the
    # scenario runs again (at most three times) until it caught a request mid-stream. Nothing
    # may be lost in any run.
    for _ in range(3):
        res = _run(env, kill_cloud, "kill9_cloud")
        recs = _mine(env, res)
        assert recs and res.requests == len(recs)
        # every request ended: completed or a clean status, none past its deadline
        assert all(r.outcome != "open" for r in recs)
        assert [r for r in recs if not r.clean] == []
        assert [r for r in recs if r.hung] == []
        hit = [r for r in recs if r.request_id in set(res.hit)]
        for r in hit:  # the edge's own accounts name the victim on the hit ones
            assert r.outcome != "ok" or VICTIM in r.note or r.degraded, r
            if r.outcome == "ok" and not r.degraded:
                assert r.cloud_node != VICTIM  # failed over, and the reply says where it finished
        if res.victim_sessions_at_fault and hit and res.extra.get("hit_open_at_fault", 0) >= 1:
            break
        env.load.records.clear()
    assert res.victim_sessions_at_fault and res.victim_sessions_at_fault >= 1
    assert res.hit, "the kill hit no request"
    assert res.extra.get("hit_open_at_fault", 0) >= 1, "no hit request was mid-stream"
    assert res.detect_s is not None and res.detect_s < DETECT_LIMIT_S


def test_frozen_cloud_is_found_by_keepalive_and_holds_nothing_after_resume(env: Env) -> None:
    env.outage_s = 4.0  # longer than keepalive needs, well under the requests' deadline
    try:
        res = _run(env, freeze_cloud, "sigstop_cloud")
    finally:
        env.outage_s = 1.0
    recs = _mine(env, res)
    assert [r for r in recs if not r.clean or r.hung or r.outcome == "open"] == []
    assert res.hit, "the freeze hit no request"
    # found by keepalive, not by the 10 s round timeout or the request's deadline
    assert res.detect_s is not None and res.detect_s < DETECT_LIMIT_S
    assert res.extra["sessions_freed_after_resume_s"] is not None


def test_a_cancelled_request_frees_its_sessions_on_every_node(env: Env) -> None:
    got = asyncio.run(cancel_once(env, limit_s=10.0, attempts=20))  # a loaded machine may need more
    assert sum(v for v in got["held_at_cancel"].values() if v > 0) >= 1, got  # something was held
    assert got["free_s"] is not None, got


def test_graceful_stop_reports_not_serving_drains_then_exits(env: Env) -> None:
    res = _run(env, graceful_stop, "graceful_stop_cloud")
    recs = _mine(env, res)
    assert [r for r in recs if not r.clean or r.hung or r.outcome == "open"] == []
    assert res.extra["not_serving_s"] is not None, "health never said NOT_SERVING"
    assert res.extra["exit_s"] is not None, "the cloud did not exit after draining"
    assert res.hit, "no request was open on the stopping cloud"
    # a request open on the stopping cloud either finished there (drained) or moved on, saying so
    assert res.extra["drained_on_victim"] + res.extra["failed_over"] >= 1
    assert asyncio.run(wait_for(lambda: sessions_idle(env), 15.0)) is not None


def test_log_pump_survives_a_full_disk() -> None:
    """gRPC's descriptor 2 is read by a pump that writes on to the log; when the log device is
    full (ENOSPC) the pump must drop the line and go on, or every later TLS refusal is lost."""
    read_fd, write_fd = os.pipe()
    full = os.open("/dev/full", os.O_WRONLY)
    pump = threading.Thread(target=tls_watch._pump, args=(read_fd, full), daemon=True)
    pump.start()
    before = tls_watch.refused
    try:
        os.write(write_fd, b"W0101 00:00:00.000000 1 x.cc:1] a warning for the full log\n")
        refusal = b"Handshake failed with error SSL_ERROR_SSL: error:1000 WRONG_VERSION_NUMBER\n"
        os.write(write_fd, refusal)
    finally:
        os.close(write_fd)
        pump.join(5)
        os.close(full)
    assert tls_watch.refused == before + 1  # the refusal after the failed write was still read


def test_chaos_cluster_reads_node_events(tmp_path: Path) -> None:
    with ChaosCluster(tmp_path) as cluster:
        cluster.launch("coordinator", "coordinator")
        events = cluster.events("coordinator")
    assert any(e.get("event") == "coordinator_listening" for e in events)


def test_a_draining_cloud_refuses_new_work_but_answers_health_and_metrics(target) -> None:
    """The drain gate: once a cloud begins to drain, a new call is refused UNAVAILABLE (an edge
    fails over on it), while health says NOT_SERVING and Metrics still answers."""

    async def main() -> None:
        node = await start_cloud(target, None)
        try:
            assert await health_of(node.address) == "SERVING"
            await node.begin_drain()
            assert await health_of(node.address) == "NOT_SERVING"
            async with aio_channel(node.address) as ch:
                req = pb.GenerateRequest(prompt=[1, 2, 3], max_new_tokens=2)
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await pb_grpc.CloudStub(ch).Generate(req, timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "draining" in (err.value.details() or "")
            assert await metric(node.address, "sessions_active") == 0
            assert await node.drain(1.0)  # nothing in progress: idle at once
        finally:
            await node.stop(grace=0)

    asyncio.run(main())
