"""Telemetry plane: codec, publisher/subscriber over 127.0.0.1, and the coordinator's intake."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable

import msgpack
import pytest
import zmq
import zmq.asyncio

from coordinator.nodes import NodeInfo, Role
from coordinator.registry import CoordinatorConfig, Registry
from coordinator.telemetry import IntakeConfig, TelemetryIntake
from node_runtime import curve, security
from node_runtime.telemetry import (
    MAX_FRAME_BYTES,
    TOPIC,
    AcceptanceStats,
    PublisherConfig,
    Reading,
    Sample,
    TelemetryDecodeError,
    TelemetryPublisher,
    TelemetrySubscriber,
    decode_sample,
    encode_sample,
)

pytestmark = pytest.mark.timeout(30)
WAIT_S = 5.0  # upper bound for anything that should take milliseconds


def run(main: Callable[[], Awaitable[None]], timeout_s: float = 10.0) -> None:
    asyncio.run(asyncio.wait_for(main(), timeout_s))


def sample(
    node: str = "edge-1", role: str = "edge", seq: int = 0, epoch: str = "e1", **kw
) -> Sample:
    return Sample(node, role, epoch, seq, time.time(), time.monotonic(), Reading(**kw))


def frames(s: Sample) -> list[bytes]:
    return [TOPIC, encode_sample(s)]


def wire(**override: object) -> bytes:
    """A valid sample's msgpack map with fields replaced or, when None, removed."""
    obj = msgpack.unpackb(encode_sample(Sample("edge-1", "edge", "e1", 0, 1.0, 2.0)))
    obj.update(override)
    return msgpack.packb({k: v for k, v in obj.items() if v is not None}, use_bin_type=True)


def test_sample_round_trip() -> None:
    s = sample(
        "cloud-7",
        "cloud",
        seq=41,
        active_sessions=3,
        queue_depth=2,
        busy_fraction=0.75,
        tokens_per_s=812.5,
        acceptance={("tiny-drafter", "tiny-target"): AcceptanceStats(100, 70, 25, 9)},
        rtt_ms={"edge-1": 3.25, "edge-2": 40.0},
        extra={"kv_bytes": 1.5e9, "temp_delta": -2.0},
    )
    assert decode_sample(encode_sample(s)) == s
    stats = s.reading.acceptance[("tiny-drafter", "tiny-target")]
    assert stats.acceptance_rate == 0.7
    assert stats.mean_accepted_length == pytest.approx(1 + 70 / 25)


def test_unknown_fields_are_ignored_so_v1_can_grow() -> None:
    assert decode_sample(wire(future_field=[1, 2, 3])) == decode_sample(wire())


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"\xc1", "msgpack"),  # never-used msgpack byte
        (b"not msgpack at all", "msgpack"),  # trailing data
        (msgpack.packb([1, 2, 3]), "schema"),
        (b"\xdf\xff\xff\xff\xff", "msgpack"),  # a map header claiming 4 billion entries
        (msgpack.packb({f"p{i}": 1.0 for i in range(2000)}), "msgpack"),  # over max_map_len
        (msgpack.packb({1: 2}), "msgpack"),  # non-string map key
        (b"\x00" * (MAX_FRAME_BYTES + 1), "oversized"),
        (wire(v=2), "version"),
        (wire(v=None), "version"),
        (wire(seq="7"), "schema"),
        (wire(seq=True), "schema"),
        (wire(seq=-1), "schema"),
        (wire(node_id=""), "schema"),
        (wire(node_id=None), "schema"),
        (wire(role="router"), "schema"),
        (wire(busy_fraction=1.5), "schema"),
        (wire(tokens_per_s=math.nan), "schema"),
        (wire(rtt_ms={"cloud-1": -1.0}), "schema"),
        (wire(rtt_ms={"cloud-1": "fast"}), "schema"),
        (wire(extra=[1.0]), "schema"),
        (wire(acceptance=[["d", "t", 5, 6, 1, 0]]), "schema"),  # accepted > drafted
        (wire(acceptance=[["d", "t", 5, 4, 1]]), "schema"),
        (wire(acceptance=[["d", "t", 5, 4, 1, 0], ["d", "t", 1, 1, 1, 1]]), "schema"),
        (wire(epoch=b"bytes"), "msgpack"),  # bin is not allowed anywhere
        (msgpack.packb(msgpack.ExtType(1, b"x")), "msgpack"),
    ],
)
def test_malformed_frames_are_rejected(frame: bytes, reason: str) -> None:
    with pytest.raises(TelemetryDecodeError) as err:
        decode_sample(frame)
    assert err.value.reason == reason


def test_publisher_never_sends_what_subscribers_reject() -> None:
    with pytest.raises(ValueError):
        encode_sample(sample(busy_fraction=2.0))
    with pytest.raises(ValueError):
        encode_sample(sample(rtt_ms={f"peer-{i}": 1.0 for i in range(5000)}))
    with pytest.raises(ValueError):
        TelemetryPublisher("edge-1", "router")


def test_gaps_duplicates_and_restarts_from_sequence_numbers() -> None:
    sub = TelemetrySubscriber()
    for seq in (0, 1, 5, 6):  # 2, 3, 4 lost
        assert sub.handle(frames(sample(seq=seq))) is not None
    assert sub.handle(frames(sample(seq=6))) is None  # the same sample again
    assert sub.handle(frames(sample(seq=2))) is None  # late, older than what we have
    assert sub.handle(frames(sample(seq=0, epoch="e2"))) is not None  # restarted publisher
    assert sub.handle(frames(sample(seq=1, epoch="e2"))) is not None
    latest = sub.latest("edge-1")
    assert latest is not None
    assert (latest.sample.seq, latest.gaps, latest.restarts, latest.duplicates) == (1, 3, 1, 2)
    stats = sub.stats()
    assert (stats["gaps_total"], stats["restarts_total"], stats["samples_total"]) == (3, 1, 6)


def test_subscriber_bounds_the_number_of_tracked_nodes() -> None:
    from node_runtime.telemetry import SubscriberConfig

    sub = TelemetrySubscriber(SubscriberConfig(max_publishers=2))
    for node in ("a", "b", "c"):
        sub.handle(frames(sample(node)))
    assert sorted(sub.snapshot()) == ["a", "b"]
    assert sub.stats()["untracked_total"] == 1


def test_malformed_frames_over_the_wire_are_counted_and_intake_goes_on() -> None:
    bad = [
        [TOPIC, b"\xc1"],
        [TOPIC, wire(seq="x")],
        [TOPIC, b"\x00" * (MAX_FRAME_BYTES + 10)],
        [TOPIC, b"\xdf\xff\xff\xff\xff"],
        [TOPIC, encode_sample(sample()), b"third frame"],
    ]

    async def main() -> None:
        ctx = zmq.asyncio.Context.instance()
        raw = ctx.socket(zmq.XPUB)  # a hostile publisher: sends whatever we like
        raw.setsockopt(zmq.LINGER, 0)
        curve.client_socket(raw, security.default(), "edge-1")  # hostile, yet with a known key
        raw.bind("tcp://127.0.0.1:0")
        sub = TelemetrySubscriber()
        await sub.start()
        try:
            sub.connect(raw.getsockopt_string(zmq.LAST_ENDPOINT))
            assert (await asyncio.wait_for(raw.recv(), WAIT_S))[:1] == b"\x01"  # subscribed
            for message in bad:
                await raw.send_multipart(message)
            await raw.send_multipart(frames(sample(seq=3)))  # in order after the bad ones
            assert await sub.wait_for(lambda: sub.latest("edge-1") is not None, WAIT_S)
            stats = sub.stats()
            assert stats["malformed_total"] == len(bad)
            assert stats["malformed_oversized_total"] == 1
            assert stats["malformed_frames_total"] == 1
            assert stats["samples_total"] == 1
        finally:
            await sub.stop()
            raw.close()

    run(main)


def test_late_joiner_has_current_state_within_a_fraction_of_the_period() -> None:
    async def main() -> None:
        pub = TelemetryPublisher("cloud-1", "cloud", lambda: Reading(queue_depth=4))
        endpoint = await pub.start()
        sub = TelemetrySubscriber()
        await sub.start()
        try:
            await asyncio.sleep(0.3)  # the first periodic sample is gone, the next is 0.7 s away
            joined = time.monotonic()
            sub.connect(endpoint)
            assert await sub.wait_for(lambda: sub.latest("cloud-1") is not None, WAIT_S)
            # Answered at once by a welcome sample, not by waiting for the next periodic one.
            assert pub.metrics()["telemetry_welcomes_total"] >= 1
            got = sub.latest("cloud-1")
            assert got is not None and got.sample.reading.queue_depth == 4
            assert got.sample.mono >= joined  # taken for this subscriber, not replayed from before
            assert got.sample.epoch == pub.epoch and got.gaps == 0
        finally:
            await sub.stop()
            await pub.stop()

    run(main)


def test_publishes_at_least_once_per_second_and_on_demand() -> None:
    async def main() -> None:
        assert PublisherConfig().period_s <= 1.0
        pub = TelemetryPublisher("edge-1", "edge")
        sub = TelemetrySubscriber()
        await sub.start()
        try:
            sub.connect(await pub.start())
            assert await sub.wait_for(lambda: sub.latest("edge-1") is not None, WAIT_S)
            first = time.monotonic()
            await asyncio.sleep(2.2)
            latest = sub.latest("edge-1")
            assert latest is not None and latest.samples >= 3 and latest.gaps == 0
            assert latest.received_at >= first + 1.0
            sent = await pub.publish(Reading(queue_depth=9))  # on demand, not on the tick
            count = latest.samples
            assert await sub.wait_for(
                lambda: (x := sub.latest("edge-1")) is not None and x.samples > count, 0.5
            )
            assert sub.latest("edge-1").sample == sent  # type: ignore[union-attr]
        finally:
            await sub.stop()
            await pub.stop()

    run(main)


async def start_when_port_is_free(pub: TelemetryPublisher) -> None:
    # zmq closes sockets in its I/O thread, after close() returns: the port frees a moment later.
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            await pub.start()
            return
        except zmq.ZMQError as err:
            if err.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.01)


def test_gap_over_the_wire_and_no_gap_when_the_publisher_restarts() -> None:
    async def main() -> None:
        period = PublisherConfig(period_s=30.0)  # only the samples this test sends
        pub = TelemetryPublisher("edge-1", "edge", config=period)
        endpoint = await pub.start()
        sub = TelemetrySubscriber()
        await sub.start()
        try:
            sub.connect(endpoint)
            assert await sub.wait_for(lambda: sub.latest("edge-1") is not None, WAIT_S)
            start = sub.latest("edge-1").sample.seq  # type: ignore[union-attr]
            await pub.publish(seq=start + 5)  # four sequence numbers never sent
            await pub.publish()
            assert await sub.wait_for(lambda: sub.stats()["samples_total"] >= 3, WAIT_S)
            assert sub.latest("edge-1").gaps == 4  # type: ignore[union-attr]
            await pub.stop()
            again = TelemetryPublisher("edge-1", "edge", endpoint=endpoint, config=period)
            await start_when_port_is_free(again)  # same address, new epoch, seq from 0
            try:
                assert await sub.wait_for(lambda: sub.stats()["restarts_total"] == 1, WAIT_S)
                latest = sub.latest("edge-1")
                assert latest is not None and latest.sample.epoch == again.epoch
                assert latest.sample.seq < start + 5 and sub.stats()["gaps_total"] == 4
            finally:
                await again.stop()
        finally:
            await sub.stop()
            await pub.stop()

    run(main)


def node(node_id: str, role: Role, telemetry: str = "") -> NodeInfo:
    return NodeInfo(node_id, role, f"{node_id}.test:50051", telemetry_address=telemetry)


def test_intake_follows_registration_and_expiry() -> None:
    async def main() -> None:
        intake = TelemetryIntake()
        now = [0.0]
        registry = Registry(
            CoordinatorConfig(),
            clock=lambda: now[0],
            on_expire=lambda status: intake.node_removed(status.info.node_id),
        )
        quiet = PublisherConfig(period_s=30.0)  # no periodic sample races the disconnect
        edge = TelemetryPublisher("edge-1", "edge", config=quiet)
        cloud = TelemetryPublisher("cloud-1", "cloud", config=quiet)
        await intake.start()
        try:
            for pub in (edge, cloud):
                await pub.start()
                role = Role(pub.role)
                intake.node_registered(
                    registry.register(node(pub.node_id, role, pub.endpoint)).node
                )

            def caught_up() -> bool:  # each publisher's welcome sample is in: nothing in flight
                return all(
                    (seen := intake.latest(pub.node_id)) is not None
                    and seen == pub.latest
                    and pub.metrics()["telemetry_welcomes_total"] == 1
                    for pub in (edge, cloud)
                )

            assert await intake.subscriber.wait_for(caught_up, WAIT_S)
            assert intake.stats()["telemetry_endpoints"] == 2
            now[0] += 0.5
            registry.heartbeat("cloud-1", registry.get("cloud-1").load)  # type: ignore[union-attr]
            now[0] += CoordinatorConfig().expiry_s  # edge-1 falls silent and expires
            registry.expire()
            assert intake.latest("edge-1") is None and intake.latest("cloud-1") is not None
            assert intake.subscriber.endpoints == {cloud.endpoint}
            before = intake.subscriber.stats()["samples_total"]
            await edge.publish()
            await cloud.publish()
            assert await intake.subscriber.wait_for(
                lambda: intake.subscriber.stats()["samples_total"] > before, WAIT_S
            )
            assert intake.subscriber.latest("edge-1") is None  # disconnected: nothing arrives
            intake.sync([])  # the registry is empty now
            assert intake.latest("cloud-1") is None and intake.stats()["telemetry_nodes"] == 0
        finally:
            await intake.stop()
            await edge.stop()
            await cloud.stop()

    run(main)


def test_intake_serves_fresh_registered_samples_with_the_registered_role() -> None:
    offset = [0.0]
    intake = TelemetryIntake(
        IntakeConfig(max_age_s=5.0), clock=lambda: time.monotonic() + offset[0]
    )
    intake.node_registered(node("edge-1", Role.EDGE))
    intake.node_registered(node("edge-2", Role.CLOUD))  # registered as cloud, publishes as edge
    for node_id in ("edge-1", "edge-2", "stranger"):
        intake.subscriber.handle(frames(sample(node_id)))
    assert intake.latest("edge-1") is not None
    assert intake.latest("edge-2") is None and intake.latest("stranger") is None
    offset[0] = 6.0
    assert intake.latest("edge-1") is None  # stale
    assert intake.stats()["telemetry_nodes_fresh"] == 0


def test_intake_rtt_and_acceptance_aggregation() -> None:
    intake = TelemetryIntake()
    for node_id, role in (("edge-1", Role.EDGE), ("edge-2", Role.EDGE), ("cloud-1", Role.CLOUD)):
        intake.node_registered(node(node_id, role))
    pair, other = ("drafter", "target"), ("drafter", "target-xl")
    feed = intake.subscriber.handle
    feed(
        frames(
            sample(
                "edge-1",
                rtt_ms={"cloud-1": 12.0},
                acceptance={
                    pair: AcceptanceStats(100, 60, 30, 5),
                    other: AcceptanceStats(10, 1, 5, 0),
                },
            )
        )
    )
    feed(frames(sample("edge-2", acceptance={pair: AcceptanceStats(50, 40, 10, 4)})))
    # A cloud's counts and an unregistered node's counts are not an edge's: left out of the sum.
    feed(
        frames(
            sample(
                "cloud-1",
                "cloud",
                rtt_ms={"edge-1": 99.0, "edge-2": 30.0},
                acceptance={pair: AcceptanceStats(1000, 1000, 100, 100)},
            )
        )
    )
    feed(frames(sample("edge-9", acceptance={pair: AcceptanceStats(7, 7, 7, 7)})))
    assert intake.rtt("edge-1", "cloud-1") == 12.0  # the edge's own measurement wins
    assert intake.rtt("edge-2", "cloud-1") == 30.0  # else the cloud's
    assert intake.rtt("edge-1", "cloud-2") is None
    total = intake.acceptance(*pair)
    assert total == AcceptanceStats(150, 100, 40, 9)
    assert total.acceptance_rate == pytest.approx(100 / 150)
    assert intake.acceptance_all() == {pair: total, other: AcceptanceStats(10, 1, 5, 0)}
    assert intake.acceptance("nobody", "nothing") == AcceptanceStats()
    intake.node_removed("edge-2")
    assert intake.acceptance(*pair) == AcceptanceStats(100, 60, 30, 5)
