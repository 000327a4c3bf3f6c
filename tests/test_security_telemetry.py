"""CURVE on the telemetry plane: an allowlist enforced by a ZAP handler, and its restart path.

Real ZeroMQ sockets on 127.0.0.1. "Gets nothing" is checked against a control that does get
samples on the same endpoints within the same wait.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import zmq
import zmq.asyncio

from node_runtime import curve, security
from node_runtime.telemetry import (
    TOPIC,
    Reading,
    Sample,
    TelemetryPublisher,
    TelemetrySubscriber,
    encode_sample,
)

QUIET_S = 0.5  # how long a refused peer is watched; the control receives within milliseconds


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


async def receives(sock: zmq.asyncio.Socket, wait_s: float = QUIET_S) -> bool:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(sock.recv_multipart(), wait_s)
        return True
    return False


def rogue_sub(ctx: zmq.asyncio.Context, endpoint: str, curve_keys: bool) -> zmq.asyncio.Socket:
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    if curve_keys:  # poses as the coordinator with a key of its own
        public, secret = zmq.curve_keypair()
        sock.curve_server, sock.curve_publickey, sock.curve_secretkey = True, public, secret
    sock.setsockopt(zmq.SUBSCRIBE, TOPIC)
    sock.connect(endpoint)
    return sock


def fake_publisher(ctx: zmq.asyncio.Context, key: str | None) -> tuple[zmq.asyncio.Socket, str]:
    """An XPUB publisher in plaintext (``key`` None), with an unknown CURVE key ("unknown") or
    with a known node's key; returns it and its endpoint."""
    sock = ctx.socket(zmq.XPUB)
    sock.setsockopt(zmq.LINGER, 0)
    config = security.default()
    if key == "unknown":
        public, secret = zmq.curve_keypair()
        sock.curve_publickey, sock.curve_secretkey = public, secret
        sock.curve_serverkey = curve.keys(config, curve.SUBSCRIBER, need_secret=False).public
    elif key is not None:
        curve.client_socket(sock, config, key)
    sock.bind("tcp://127.0.0.1:0")
    return sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)


async def send_samples(sock: zmq.asyncio.Socket, node_id: str, n: int = 20) -> None:
    for seq in range(n):
        sample = Sample(node_id, "cloud", "fake", seq, 0.0, 0.0, Reading(queue_depth=99))
        await sock.send_multipart([TOPIC, encode_sample(sample)])
        await asyncio.sleep(QUIET_S / n)


def test_a_reader_without_the_subscriber_key_gets_nothing() -> None:
    async def main() -> tuple[bool, bool, bool]:
        ctx = zmq.asyncio.Context.instance()
        pub = TelemetryPublisher("cloud-r", "cloud", lambda: Reading(queue_depth=1))
        endpoint = await pub.start()
        sub = TelemetrySubscriber()
        await sub.start()
        plain, unknown = rogue_sub(ctx, endpoint, False), rogue_sub(ctx, endpoint, True)
        try:
            sub.connect(endpoint)
            control = await sub.wait_for(lambda: sub.latest("cloud-r") is not None, 10)
            for _ in range(3):
                await pub.publish()
            got = await asyncio.gather(receives(plain), receives(unknown))
            return control, got[0], got[1]
        finally:
            plain.close()
            unknown.close()
            await sub.stop()
            await pub.stop()

    control, plain, unknown = run(main())
    assert control
    assert not plain and not unknown


def test_an_unknown_publisher_key_gets_nothing_in_and_names_are_checked() -> None:
    async def main() -> dict[str, Any]:
        ctx = zmq.asyncio.Context.instance()
        curve.keys(security.default(), "cloud-b")  # a real node's key: on the allowlist
        sub = TelemetrySubscriber()
        await sub.start()
        out: dict[str, Any] = {}
        try:
            for case, key, node in (
                ("plaintext", None, "cloud-p"),
                ("unknown", "unknown", "cloud-u"),
                ("impersonation", "cloud-b", "cloud-a"),
                ("control", "cloud-b", "cloud-b"),
            ):
                sock, endpoint = fake_publisher(ctx, key)
                sub.connect(endpoint)
                await send_samples(sock, node)
                out[case] = sub.latest(node) is not None
                sub.disconnect(endpoint)
                sock.close()
            out["stats"] = sub.stats()
            assert sub._zap is not None
            out["zap"] = dict(sub._zap.counts)
        finally:
            await sub.stop()
        return out

    out = run(main())
    assert out["control"]
    assert not out["plaintext"] and not out["unknown"] and not out["impersonation"]
    assert out["stats"]["impersonations_total"] >= 1
    assert out["zap"]["denied"] >= 1 and out["zap"]["allowed"] >= 2


def test_a_second_handler_after_the_first_stopped_still_gets_zap_requests() -> None:
    """The restart path: the second subscriber's handler must see the handshakes (a known key
    gets in, counted by it; an unknown one does not), including on a context of its own."""

    async def once(ctx: zmq.asyncio.Context | None) -> tuple[bool, bool, dict[str, int]]:
        pub = TelemetryPublisher("cloud-z", "cloud", context=ctx)
        endpoint = await pub.start()
        sub = TelemetrySubscriber(context=ctx)
        await sub.start()
        try:
            sub.connect(endpoint)
            known = await sub.wait_for(lambda: sub.latest("cloud-z") is not None, 10)
            sock, fake = fake_publisher(ctx or zmq.asyncio.Context.instance(), "unknown")
            sub.connect(fake)
            await send_samples(sock, "z-u")
            sock.close()
            assert sub._zap is not None
            return known, sub.latest("z-u") is not None, dict(sub._zap.counts)
        finally:
            await sub.stop()
            await pub.stop()

    async def main() -> list[tuple[bool, bool, dict[str, int]]]:
        own = zmq.asyncio.Context()
        try:
            return [await once(None), await once(None), await once(own), await once(None)]
        finally:
            own.term()

    for known, unknown, counts in run(main()):
        assert known and not unknown
        assert counts["allowed"] >= 1 and counts["denied"] >= 1  # this handler got the requests


def test_without_a_handler_a_curve_server_fails_closed() -> None:
    """No ZAP handler on the context (stopped, or never started): even a known key is refused,
    where plain libzmq would let any key in."""

    async def main() -> tuple[bool, bool]:
        ctx = zmq.asyncio.Context()
        try:
            results = []
            for enforce in (True, False):
                server = ctx.socket(zmq.SUB)
                server.setsockopt(zmq.LINGER, 0)
                curve.server_socket(server, security.default())
                if not enforce:  # what libzmq does by default: shows the test can see a leak
                    server.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 0)
                server.setsockopt(zmq.SUBSCRIBE, TOPIC)
                sock, endpoint = fake_publisher(ctx, "cloud-b")
                server.connect(endpoint)
                sender = asyncio.create_task(send_samples(sock, "cloud-b"))
                results.append(await receives(server))
                await sender
                sock.close()
                server.close()
            return results[0], results[1]
        finally:
            ctx.term()

    enforced, default = run(main())
    assert not enforced
    assert default  # libzmq's default without a handler: anyone in
