"""Node identity bound to the certificate, and certificates made by ``tandem certs``.

The attack from the issue: a fake node registers under a real cloud's id, takes its traffic and
keeps it because the real cloud's heartbeats are still accepted. Here the real cloud is a real
cloud node process-in-the-loop (grpc.aio server with the trained target), registered by its
NodeAgent with its own certificate; the impostor is another client of the same coordinator.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from support import until

from cloud_node.node import start_cloud
from coordinator.registry import CoordinatorConfig
from coordinator.service import serve
from models.task import WordTokenizer
from node_runtime import pki, security
from node_runtime.agent import NodeAgent
from node_runtime.serving import aio_channel, aio_server, bind
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[1]
TOK = WordTokenizer()


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


async def denied(call: Any) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, info.value.details()
    return info.value.details() or ""


def test_a_fake_node_cannot_take_over_a_real_clouds_id(target: Any) -> None:
    async def main() -> None:
        coordinator, coord = await serve(config=CoordinatorConfig(heartbeat_interval_s=0.1))
        cloud = await start_cloud(target, TOK.eos_id)
        info = pb.NodeInfo(node_id="cloud-1", role=pb.ROLE_CLOUD, address=cloud.address)
        agent = NodeAgent(coord, info, heartbeat_interval_s=0.2)
        try:
            assert await agent.start(wait_s=10), agent.last_error
            fake = pb.NodeInfo()
            fake.CopyFrom(info)
            fake.address = "127.0.0.1:9"  # the impostor's own server
            squat = pb.NodeInfo(node_id="cloud-2", role=pb.ROLE_CLOUD, address=cloud.address)
            for identity in (None, "cloud-impostor"):  # a plain client, another node
                async with aio_channel(coord, identity=identity) as ch:
                    stub = pb_grpc.CoordinatorStub(ch)
                    why = await denied(stub.Register(pb.RegisterRequest(node=fake), timeout=5))
                    assert "cloud-1" in why
                    await denied(stub.Heartbeat(pb.HeartbeatRequest(node_id="cloud-1"), timeout=5))
                    await denied(
                        stub.Deregister(pb.DeregisterRequest(node_id="cloud-1"), timeout=5)
                    )
                    why = await denied(stub.Register(pb.RegisterRequest(node=squat), timeout=5))
                    # the real cloud's address is not taken either (or the name is wrong)
                    assert cloud.address in why if identity is None else "names node" in why
            # a certificate naming a node is good for that node only, registered or not
            async with aio_channel(coord, identity="cloud-impostor") as ch:
                stub = pb_grpc.CoordinatorStub(ch)
                other = pb.NodeInfo(node_id="cloud-3", role=pb.ROLE_CLOUD, address="127.0.0.1:7")
                why = await denied(stub.Register(pb.RegisterRequest(node=other), timeout=5))
                assert "names node 'cloud-impostor'" in why
                # and an empty id is its own, not a fresh one the coordinator would make up
                own = pb.NodeInfo(role=pb.ROLE_CLOUD, address="127.0.0.1:7")
                reply = await stub.Register(pb.RegisterRequest(node=own), timeout=5)
                assert reply.node_id == "cloud-impostor"
            # the real cloud is untouched: same address, still heartbeating, picked by edges
            before = agent.counts["heartbeats"]
            await until(lambda: agent.counts["heartbeats"] > before + 2, "real cloud heartbeats")
            assert agent.registered
            assert agent.counts["refused_heartbeats"] == 0
            async with aio_channel(coord) as ch:
                picked = await pb_grpc.CoordinatorStub(ch).PickCloud(
                    pb.PickCloudRequest(exclude=["cloud-impostor"]), timeout=5
                )
            assert (picked.cloud.node_id, picked.cloud.address) == ("cloud-1", cloud.address)
            refused = coordinator.servicer.registry.metrics()["refused_not_owner_total"]
            assert refused == 4  # the plain client's four; the impostor's failed the name check
        finally:
            await agent.stop()
            await cloud.stop()
            await coordinator.stop(0)

    run(main())


def test_the_owner_can_leave_and_come_back_and_then_its_id_is_free() -> None:
    async def main() -> None:
        coordinator, coord = await serve()
        try:
            node = pb.NodeInfo(node_id="edge-7", role=pb.ROLE_EDGE, address="127.0.0.1:11")
            async with aio_channel(coord, identity="edge-7") as ch:
                stub = pb_grpc.CoordinatorStub(ch)
                await stub.Register(pb.RegisterRequest(node=node), timeout=5)
                await stub.Register(pb.RegisterRequest(node=node), timeout=5)  # idempotent
                assert (await stub.Heartbeat(pb.HeartbeatRequest(node_id="edge-7"))).known
                assert (await stub.Deregister(pb.DeregisterRequest(node_id="edge-7"))).removed
            async with aio_channel(coord) as ch:  # gone: another certificate may take the id
                stub = pb_grpc.CoordinatorStub(ch)
                await stub.Register(pb.RegisterRequest(node=node), timeout=5)
        finally:
            await coordinator.stop(0)

    run(main())


def test_tandem_certs_makes_ip_sans_and_dialing_an_ip_outside_them_fails(tmp_path: Path) -> None:
    out = tmp_path / "cluster"
    done = subprocess.run(
        [sys.executable, "-m", "tandem.security_cli", "certs", "--out", str(out)]
        + ["--node", "cloud-1=10.1.2.3,cloud.example", "--node", "edge-1", "--ip", "127.0.0.2"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    assert "cloud-1" in done.stdout and "10.1.2.3" in done.stdout
    assert (out / "ca.key").stat().st_mode & 0o777 == 0o600
    cloud = pki.cert_info((out / "nodes" / "cloud-1.pem").read_bytes())
    assert cloud.node_id == "cloud-1"
    assert {"10.1.2.3", "127.0.0.1", "127.0.0.2", "::1"} <= cloud.ips
    assert {"cloud.example", "localhost"} <= cloud.dns
    server = pki.cert_info((out / "nodes" / f"{security.SERVER_IDENTITY}.pem").read_bytes())
    assert {"10.1.2.3", "127.0.0.2"} <= server.ips
    assert (out / "curve" / "cloud-1.secret").stat().st_mode & 0o777 == 0o600
    tls = security.SecurityConfig(mode="tls", home=out)

    async def dial(host: str, cert_ips: tuple[str, ...]) -> grpc.StatusCode:
        # a server whose certificate covers only ``cert_ips``, dialled at ``host``
        pair = pki.make_node_cert(security.ca(tls), "solo", cert_ips, ())
        creds = grpc.ssl_server_credentials(
            [(pair.key_pem, pair.cert_pem)], security.ca(tls).cert_pem, True
        )
        server = aio_server(tls)
        pb_grpc.add_CoordinatorServicer_to_server(pb_grpc.CoordinatorServicer(), server)
        port = server.add_secure_port("127.0.0.1:0", creds)
        await server.start()
        try:
            async with aio_channel(f"{host}:{port}", security=tls) as ch:
                await pb_grpc.CoordinatorStub(ch).ListNodes(pb.ListNodesRequest(), timeout=5)
        except grpc.aio.AioRpcError as err:
            return err.code()
        finally:
            await server.stop(0)
        return grpc.StatusCode.OK

    async def main() -> None:
        assert await dial("127.0.0.1", ("127.0.0.1",)) == grpc.StatusCode.UNIMPLEMENTED
        assert await dial("127.0.0.1", ("10.1.2.3",)) == grpc.StatusCode.UNAVAILABLE
        # the files `tandem certs` made serve a node in tls mode (nothing is made on the fly)
        server = aio_server(tls)
        pb_grpc.add_CoordinatorServicer_to_server(pb_grpc.CoordinatorServicer(), server)
        address = bind(server, "127.0.0.1", 0)
        await server.start()
        try:
            async with aio_channel(address, security=tls, identity="edge-1") as ch:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await pb_grpc.CoordinatorStub(ch).ListNodes(pb.ListNodesRequest(), timeout=5)
                assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED  # past TLS and token
        finally:
            await server.stop(0)

    run(main())
    with pytest.raises(security.SecurityError, match="node.pem is missing"):
        security.identity(security.SecurityConfig(mode="tls", home=tmp_path / "none"), "x")


def test_auto_mode_renews_a_certificate_close_to_expiry(tmp_path: Path) -> None:
    config = security.SecurityConfig(home=tmp_path / "home")
    first = security.identity(config, "edge-9")
    assert security.identity(config, "edge-9") == first  # kept while valid
    old = pki.make_node_cert(security.ca(config), "edge-9", days=10)
    pki.save_pair(
        old, tmp_path / "home" / "nodes" / "edge-9.pem", tmp_path / "home" / "nodes" / "edge-9.key"
    )
    renewed = security.identity(config, "edge-9")
    assert renewed != old
    assert (pki.cert_info(renewed.cert_pem).not_after - pki.utc_now()).days > 300
