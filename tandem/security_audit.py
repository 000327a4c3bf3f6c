"""Count what a secured local cluster accepts from callers that are not who they must be.

``run_audit`` starts a coordinator, a cloud node (the bundled target) and a telemetry publisher and
subscriber on 127.0.0.1, in a fresh state directory, secured as by default (mTLS, token, CURVE),
then tries every way in that an outsider on the same host has:

- gRPC, on a unary (``Coordinator.ListNodes``), a server-streaming (``Coordinator.Submit``) and a
  bidirectional (``Cloud.Speculate``) RPC: plaintext, TLS without a client certificate, a
  certificate from another CA, no token, a wrong token;
- identity: register, heartbeat and deregister a registered cloud's id from another certificate,
  and take over its address under a new id;
- telemetry: read a node's samples in plaintext and with an unknown CURVE key; publish to the
  coordinator in plaintext, with an unknown key, and in another node's name with a known key.

The same probe from a legitimate caller is the control: an attempt counts as accepted when it got
what the control got (a reply, or the handler's own status for a deliberately empty request), so
the audit can see an acceptance rather than assume a refusal. ``unauthenticated_accepted`` counts
the gRPC and telemetry authentication attempts that were accepted (the issue's target: 0);
``unauthorized_accepted`` the identity attempts. HTTP (the OpenAI API) is audited with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import zmq
import zmq.asyncio

from node_runtime import curve, pki, security
from node_runtime.serving import aio_channel
from node_runtime.telemetry import (
    TOPIC,
    Reading,
    Sample,
    TelemetryPublisher,
    TelemetrySubscriber,
    encode_sample,
)
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

WAIT_S = 0.5  # how long a telemetry probe listens; the control receives within milliseconds
Probe = Callable[[grpc.aio.Channel], Awaitable[grpc.StatusCode]]


async def _unary(ch: grpc.aio.Channel) -> grpc.StatusCode:
    await pb_grpc.CoordinatorStub(ch).ListNodes(pb.ListNodesRequest(), timeout=5)
    return grpc.StatusCode.OK


async def _server_stream(ch: grpc.aio.Channel) -> grpc.StatusCode:
    async for _ in pb_grpc.CoordinatorStub(ch).Submit(pb.JobRequest(), timeout=5):
        pass
    return grpc.StatusCode.OK


async def _bidi(ch: grpc.aio.Channel) -> grpc.StatusCode:
    call = pb_grpc.CloudStub(ch).Speculate(timeout=5)
    await call.write(pb.SpecRequest())  # empty: the handler itself answers INVALID_ARGUMENT
    async for _ in call:
        pass
    return grpc.StatusCode.OK


async def _code(probe: Probe, ch: grpc.aio.Channel) -> grpc.StatusCode:
    try:
        return await probe(ch)
    except grpc.aio.AioRpcError as err:
        return err.code()


def _channels(config: security.SecurityConfig, address: str) -> dict[str, Callable[[], Any]]:
    ca = security.ca(config).cert_pem
    own = security.identity(config, security.CLIENT_IDENTITY)
    foreign_ca = pki.make_ca("Someone else's CA")
    foreign = pki.make_node_cert(foreign_ca, security.CLIENT_IDENTITY)
    good_token = grpc.access_token_call_credentials(security.token(config))
    bad_token = grpc.access_token_call_credentials("x" * 43)

    def tls(pair: pki.KeyPair | None, token: Any) -> Callable[[], grpc.aio.Channel]:
        creds = grpc.ssl_channel_credentials(
            ca, pair.key_pem if pair else None, pair.cert_pem if pair else None
        )
        if token is not None:
            creds = grpc.composite_channel_credentials(creds, token)
        return lambda: grpc.aio.secure_channel(address, creds)

    return {
        "plaintext": lambda: grpc.aio.insecure_channel(address),
        "tls_without_client_cert": tls(None, good_token),
        "cert_from_another_ca": tls(foreign, good_token),
        "no_token": tls(own, None),
        "wrong_token": tls(own, bad_token),
    }


async def _grpc_cases(config: security.SecurityConfig, coord: str, cloud: str) -> list[dict]:
    rows = []
    for kind, probe, address in (
        ("unary", _unary, coord),
        ("server_stream", _server_stream, coord),
        ("bidi", _bidi, cloud),
    ):
        async with aio_channel(address) as ch:
            control = await _code(probe, ch)
        if control in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNAVAILABLE):
            raise RuntimeError(f"control {kind} call got {control.name}: the audit cannot judge")
        for name, make in _channels(config, address).items():
            async with make() as ch:
                got = await _code(probe, ch)
            rows.append(_row("grpc", f"{kind}:{name}", got.name, got == control, control.name))
    return rows


def _row(plane: str, case: str, got: str, accepted: bool, control: str) -> dict[str, Any]:
    return {"plane": plane, "case": case, "got": got, "control": control, "accepted": accepted}


async def _identity_cases(coord: str, victim: pb.NodeInfo) -> list[dict]:
    rows = []
    thief = pb.NodeInfo()
    thief.CopyFrom(victim)
    thief.address = "127.0.0.1:9"  # where the thief would send the victim's traffic
    other = pb.NodeInfo()
    other.CopyFrom(victim)
    other.node_id = "cloud-usurper"
    attempts = {
        "register_victims_id": lambda s: s.Register(pb.RegisterRequest(node=thief), timeout=5),
        "heartbeat_victims_id": lambda s: s.Heartbeat(
            pb.HeartbeatRequest(node_id=victim.node_id), timeout=5
        ),
        "deregister_victim": lambda s: s.Deregister(
            pb.DeregisterRequest(node_id=victim.node_id), timeout=5
        ),
        "take_victims_address": lambda s: s.Register(pb.RegisterRequest(node=other), timeout=5),
    }
    for who in ("plain_client_cert", "cert_naming_another_node"):
        identity = None if who == "plain_client_cert" else "cloud-impostor"
        async with aio_channel(coord, identity=identity) as ch:
            stub = pb_grpc.CoordinatorStub(ch)
            for name, call in attempts.items():
                try:
                    await call(stub)
                    got = "OK"
                except grpc.aio.AioRpcError as err:
                    got = err.code().name
                rows.append(_row("identity", f"{name}:{who}", got, got == "OK", "OK"))
    return rows


async def _receives(sock: zmq.asyncio.Socket) -> bool:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(sock.recv_multipart(), WAIT_S)
        return True
    return False


async def _telemetry_cases(config: security.SecurityConfig) -> list[dict]:
    ctx = zmq.asyncio.Context.instance()
    rows = []
    publisher = TelemetryPublisher("cloud-a", "cloud")
    endpoint = await publisher.start()
    subscriber = TelemetrySubscriber()
    await subscriber.start()
    try:
        subscriber.connect(endpoint)
        control = await subscriber.wait_for(lambda: subscriber.latest("cloud-a") is not None, 5)
        if not control:
            raise RuntimeError("the control subscriber got no sample: the audit cannot judge")
        for name in ("plaintext", "unknown_curve_key"):  # read a node's telemetry
            sock = ctx.socket(zmq.SUB)
            sock.setsockopt(zmq.LINGER, 0)
            if name == "unknown_curve_key":
                public, secret = zmq.curve_keypair()
                sock.curve_server, sock.curve_publickey, sock.curve_secretkey = True, public, secret
            sock.setsockopt(zmq.SUBSCRIBE, TOPIC)
            sock.connect(endpoint)
            got = await _receives(sock)
            sock.close()
            rows.append(_row("telemetry", f"read:{name}", str(got), got, "True"))
        for name, node, key_of in (
            ("plaintext", "cloud-fake-1", None),
            ("unknown_curve_key", "cloud-fake-2", "unknown"),
            ("known_key_in_another_nodes_name", "cloud-a", "cloud-b"),
        ):
            if key_of == "cloud-b":
                curve.keys(config, "cloud-b")  # a real node's key pair, on the allowlist
            rows.append(await _fake_publisher(ctx, subscriber, config, name, node, key_of))
    finally:
        await subscriber.stop()
        await publisher.stop()
    return rows


async def _fake_publisher(
    ctx: zmq.asyncio.Context,
    subscriber: TelemetrySubscriber,
    config: security.SecurityConfig,
    name: str,
    node: str,
    key_of: str | None,
) -> dict[str, Any]:
    """A publisher the coordinator's subscriber follows: does a sample of it get in?"""
    taken: list[Sample] = []
    handle = subscriber.handle

    def spy(frames: Any, sender: str | None = None) -> Sample | None:
        sample = handle(frames, sender)
        if sample is not None and sample.epoch == "fake":
            taken.append(sample)
        return sample

    subscriber.handle = spy  # type: ignore[method-assign]
    sock = ctx.socket(zmq.XPUB)
    sock.setsockopt(zmq.LINGER, 0)
    if key_of == "unknown":
        public, secret = zmq.curve_keypair()
        sock.curve_publickey, sock.curve_secretkey = public, secret
        sock.curve_serverkey = curve.keys(config, curve.SUBSCRIBER, need_secret=False).public
    elif key_of is not None:
        curve.client_socket(sock, config, key_of)  # a real node's key, another node's name
    sock.bind("tcp://127.0.0.1:0")
    endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    subscriber.connect(endpoint)
    try:
        for seq in range(int(WAIT_S / 0.05)):
            sample = Sample(node, "cloud", "fake", seq, 0.0, 0.0, Reading(queue_depth=99))
            await sock.send_multipart([TOPIC, encode_sample(sample)])
            await asyncio.sleep(0.05)
    finally:
        subscriber.disconnect(endpoint)
        subscriber.handle = handle  # type: ignore[method-assign]
        sock.close()
    plane = "identity" if key_of not in (None, "unknown") else "telemetry"
    return _row(plane, f"publish:{name}", str(bool(taken)), bool(taken), "True")


async def run_audit(mode: str = "auto") -> dict[str, Any]:
    """Start a local cluster secured by ``mode`` (the default, or "plaintext" to show what the
    audit sees when nothing is secured) in a fresh state directory and try every way in."""
    from cloud_node.node import start_cloud
    from coordinator.service import serve
    from models.task import WordTokenizer
    from models.torch_backend import load_torch
    from node_runtime.agent import NodeAgent

    previous = security.default()
    home = Path(tempfile.mkdtemp(prefix="tandem-audit-"))
    config = security.SecurityConfig(mode=mode, home=home)
    keys = security.SecurityConfig(mode="auto", home=home)  # the attackers' own material
    security.set_default(config)
    try:
        coordinator, coord = await serve()
        cloud = await start_cloud(load_torch("target"), WordTokenizer().eos_id)
        info = pb.NodeInfo(node_id="cloud-victim", role=pb.ROLE_CLOUD, address=cloud.address)
        agent = NodeAgent(coord, info)
        try:
            if not await agent.start(wait_s=10):
                raise RuntimeError(f"the cloud never registered: {agent.last_error}")
            rows = await _grpc_cases(keys, coord, cloud.address)
            rows += await _identity_cases(coord, info)
            rows += await _telemetry_cases(keys)
            victim = coordinator.servicer.registry.get("cloud-victim")
            still_own = victim is not None and victim.info.address == cloud.address
        finally:
            await agent.stop()
            await cloud.stop()
            await coordinator.stop(0)
    finally:
        security.set_default(previous)
    rows.append(
        _row(
            "identity",
            "victim_still_registered_at_its_address",
            str(still_own),
            not still_own,
            "True",
        )
    )
    authn = [r for r in rows if r["plane"] in ("grpc", "telemetry")]
    authz = [r for r in rows if r["plane"] == "identity"]
    return {
        "security_mode": mode,
        "unauthenticated_accepted": sum(r["accepted"] for r in authn),
        "unauthenticated_attempts": len(authn),
        "unauthenticated_accepted_grpc": sum(r["accepted"] for r in authn if r["plane"] == "grpc"),
        "unauthenticated_accepted_telemetry": sum(
            r["accepted"] for r in authn if r["plane"] == "telemetry"
        ),
        "unauthorized_accepted": sum(r["accepted"] for r in authz),
        "unauthorized_attempts": len(authz),
        "http": "audited with the OpenAI API, not here",
        "cases": rows,
    }


def print_report(report: dict[str, Any]) -> None:
    """One line per attempt, then the totals."""
    print(f"{'plane':<10} {'attempt':<52} {'got':<20} {'control':<20} accepted")
    for r in report["cases"]:
        print(f"{r['plane']:<10} {r['case']:<52} {r['got']:<20} {r['control']:<20} {r['accepted']}")
    print(
        f"unauthenticated_accepted {report['unauthenticated_accepted']} of "
        f"{report['unauthenticated_attempts']} attempts (gRPC "
        f"{report['unauthenticated_accepted_grpc']}, telemetry "
        f"{report['unauthenticated_accepted_telemetry']}); unauthorized_accepted "
        f"{report['unauthorized_accepted']} of {report['unauthorized_attempts']}"
    )
