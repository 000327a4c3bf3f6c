"""The link emulator delivers what it is asked: RTT, bandwidth, pipelining, blackholes, resets,
scheduled and live changes, and bytes unchanged. Everything on 127.0.0.1, every wait bounded."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import statistics
import threading
import time
from collections.abc import Awaitable
from typing import TypeVar

import pytest

from simulations.link.check import CheckConfig, ProbeServer, check_link
from simulations.link.profiles import PROFILES, UnknownProfileError, get_profile
from simulations.link.proxy import LinkProxy, ProxyConfig
from simulations.link.spec import LinkSpec, Schedule

T = TypeVar("T")
pytestmark = pytest.mark.timeout(60)


def run(coro: Awaitable[T], timeout: float = 20.0) -> T:
    """Run a test coroutine on a fresh loop, bounded in time."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


async def open_echo(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 2.0)
    writer.write(b"E")  # ProbeServer mode: echo
    return reader, writer


async def ping(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int = 32) -> float:
    t0 = time.perf_counter()
    writer.write(bytes(n))
    await writer.drain()
    await asyncio.wait_for(reader.readexactly(n), 5.0)
    return time.perf_counter() - t0


def test_check_rtt_and_bandwidth_within_10_percent() -> None:
    result = run(check_link(LinkSpec.symmetric(latency_ms=30.0, bandwidth_mbit=8.0)), 30.0)
    assert result.within(0.10), result.table()
    assert [m.name for m in result.measurements] == ["rtt_ms", "uplink_mbit", "downlink_mbit"]


def test_check_asymmetric_bandwidth() -> None:
    spec = LinkSpec.symmetric(latency_ms=20.0).changed(
        {"up_bandwidth_mbit": 4.0, "down_bandwidth_mbit": 16.0}
    )
    result = run(check_link(spec, config=CheckConfig(rtt_samples=15, transfer_s=0.6)), 30.0)
    assert result.within(0.10), result.table()


def test_latency_is_pipelined_not_per_message() -> None:
    async def main() -> list[float]:
        async with (
            ProbeServer() as server,
            LinkProxy(ProxyConfig(server.address), LinkSpec.symmetric(latency_ms=40.0)) as proxy,
        ):
            reader, writer = await open_echo(proxy.address)
            await ping(reader, writer)  # connection set-up out of the way
            sent: list[float] = []

            async def send() -> None:
                for i in range(20):
                    sent.append(time.perf_counter())
                    writer.write(i.to_bytes(4, "big") * 25)
                    await writer.drain()
                    await asyncio.sleep(0.002)

            sender = asyncio.create_task(send())
            latencies = []
            for i in range(20):
                msg = await asyncio.wait_for(reader.readexactly(100), 5.0)
                assert msg == i.to_bytes(4, "big") * 25
                latencies.append(time.perf_counter() - sent[i])
            await sender
            writer.close()
            return latencies

    latencies = run(main())
    # each message pays one RTT (80 ms); serial delivery would make the last one wait ~1.6 s
    assert min(latencies) >= 0.078
    assert sorted(latencies)[len(latencies) // 2] < 0.120, latencies  # median: a busy CPU adds


def test_blackhole_holds_bytes_until_cleared() -> None:
    async def main() -> None:
        spec = LinkSpec.symmetric(latency_ms=5.0, blackhole=True)
        async with ProbeServer() as server, LinkProxy(ProxyConfig(server.address), spec) as proxy:
            reader, writer = await open_echo(proxy.address)
            writer.write(b"hello")
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(reader.readexactly(5), 0.3)
            assert proxy.counters().bytes_up == 0
            proxy.set(blackhole=False)  # TCP would retransmit: nothing is lost, only late
            assert await asyncio.wait_for(reader.readexactly(5), 2.0) == b"hello"
            writer.close()

    run(main())


def test_bounded_buffers_push_back_on_the_sender() -> None:
    async def main() -> None:
        spec = LinkSpec.symmetric(blackhole=True)
        async with (
            ProbeServer() as server,
            LinkProxy(ProxyConfig(server.address, max_queued_bytes=64 * 1024), spec) as proxy,
        ):
            _, writer = await open_echo(proxy.address)
            writer.write(bytes(64 * 1024 * 1024))  # far more than queue + kernel buffers
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(writer.drain(), 1.0)
            writer.transport.abort()

    run(main())


def test_random_resets_reach_the_client() -> None:
    async def main() -> int:
        spec = LinkSpec().changed({"up_resets_per_s": 50.0})
        async with ProbeServer() as server, LinkProxy(ProxyConfig(server.address), spec) as proxy:
            reader, writer = await open_echo(proxy.address)
            with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
                for _ in range(500):  # 50/s: reset within a few hundred ms with near certainty
                    await ping(reader, writer)
                    await asyncio.sleep(0.005)
            writer.close()
            return proxy.counters().resets

    assert run(main()) >= 1


def test_reset_all_and_stop_close_connections() -> None:
    async def main() -> None:
        async with ProbeServer() as server, LinkProxy(ProxyConfig(server.address)) as proxy:
            reader, writer = await open_echo(proxy.address)
            await ping(reader, writer)
            assert proxy.reset_all() == 1
            with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
                await asyncio.wait_for(reader.readexactly(1), 2.0)
            writer.close()
            reader, writer = await open_echo(proxy.address)
            await ping(reader, writer)
            await proxy.stop()
            with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
                await asyncio.wait_for(reader.readexactly(1), 2.0)
            writer.close()

    run(main())


def test_unreachable_upstream_closes_the_client() -> None:
    async def main() -> int:
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{probe.getsockname()[1]}"
        probe.close()  # nothing listens there now
        async with LinkProxy(ProxyConfig(dead)) as proxy:
            reader, writer = await open_echo(proxy.address)
            with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
                await asyncio.wait_for(reader.readexactly(1), 2.0)
            writer.close()
            return proxy.counters().upstream_failures

    assert run(main()) == 1


def test_scheduled_change_takes_effect_on_time() -> None:
    async def main() -> list[tuple[float, float, float]]:
        schedule = Schedule([(0.6, {"latency_ms": 60.0})])
        async with (
            ProbeServer() as server,
            LinkProxy(
                ProxyConfig(server.address), LinkSpec.symmetric(latency_ms=10.0), schedule
            ) as proxy,
        ):
            t0 = time.perf_counter()
            reader, writer = await open_echo(proxy.address)
            samples = []
            while time.perf_counter() - t0 < 1.4:
                start = time.perf_counter() - t0
                rtt = await ping(reader, writer)
                samples.append((start, start + rtt, rtt))
            writer.close()
            return samples

    samples = run(main())
    before = [rtt for _, done, rtt in samples if done < 0.55]
    after = [rtt for start, _, rtt in samples if start > 0.7]
    assert before and after
    # Lower bounds are the emulator's doing; a busy CPU only adds, so the upper one is relative.
    assert min(after) > 0.110, after
    assert max(before) < min(after), (before, after)


def test_live_set_from_a_synchronous_caller() -> None:
    addr: list[str] = []
    ready, done = threading.Event(), threading.Event()

    async def serve() -> None:  # the upstream lives on its own loop, as a real service would
        async with ProbeServer() as server:
            addr.append(server.address)
            ready.set()
            await asyncio.to_thread(done.wait, 20.0)

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    assert ready.wait(5.0)
    try:
        fast, slow = _rtts_before_and_after_set(addr[0])
    finally:
        done.set()
        thread.join(5.0)
    assert 0.009 < fast < slow, (fast, slow)  # a busy CPU only adds: no tight upper bounds
    assert slow > 0.078, slow


def _rtts_before_and_after_set(upstream: str) -> tuple[float, float]:
    spec = LinkSpec.symmetric(latency_ms=5.0)
    with LinkProxy(ProxyConfig(upstream), spec).start_in_thread() as link:
        with socket.create_connection(("127.0.0.1", link.port), timeout=2.0) as sock:
            sock.sendall(b"E")

            def rtt() -> float:
                t = time.perf_counter()
                sock.sendall(b"x" * 16)
                got = b""
                while len(got) < 16:
                    got += sock.recv(16 - len(got))
                return time.perf_counter() - t

            fast = statistics.median(rtt() for _ in range(7))
            link.set(latency_ms=40.0)
            assert link.spec.uplink.latency_ms == 40.0
            slow = statistics.median(rtt() for _ in range(5))
        assert link.counters().connections == 1
    return fast, slow


def test_bytes_are_forwarded_unchanged_both_ways() -> None:
    payload = os.urandom(2 * 1024 * 1024)

    async def main() -> tuple[bytes, int, int]:
        # jitter on every chunk and bandwidth segmentation: order must still hold
        spec = LinkSpec.symmetric(latency_ms=5.0, jitter_ms=5.0, bandwidth_mbit=100.0)
        async with ProbeServer() as server, LinkProxy(ProxyConfig(server.address), spec) as proxy:
            reader, writer = await open_echo(proxy.address)

            async def send() -> None:
                for i in range(0, len(payload), 10_000):  # many small writes: many chunks
                    writer.write(payload[i : i + 10_000])
                    await writer.drain()

            sender = asyncio.create_task(send())
            echoed = await asyncio.wait_for(reader.readexactly(len(payload)), 10.0)
            await sender
            writer.close()
            counters = proxy.counters()
            return echoed, counters.bytes_up, counters.bytes_down

    echoed, up, down = run(main())
    assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
    assert (up, down) == (len(payload) + 1, len(payload))  # +1: the echo-mode byte


def test_profile_lookup_and_figures() -> None:
    with pytest.raises(UnknownProfileError) as err:
        get_profile("dialup")
    for name in ("loopback", "lan", "wifi", "5g", "lte", "congested-lte", "satellite"):
        assert name in str(err.value)
        assert PROFILES[name].source
    lte = get_profile("lte").spec
    assert lte.uplink.latency_ms > lte.downlink.latency_ms  # scheduling-request grant delay
    assert get_profile("congested-lte").spec.rtt_ms > lte.rtt_ms
