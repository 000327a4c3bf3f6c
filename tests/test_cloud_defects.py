"""Cloud node defects, each checked on a real in-process gRPC cloud on 127.0.0.1 with the bundled
target: loaded heartbeats, oversized verify messages, sessions bound to their stream, idle sessions
swept, bounded and fair cloud-only generation behind verify rounds, refusals counted once."""

from __future__ import annotations

import asyncio
import threading
import tracemalloc
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import grpc
import numpy as np
import pytest
from support import Blocker, until

from cloud_node.engine import EngineConfig, RequestError
from cloud_node.model_thread import ModelThread, Priority
from cloud_node.node import CloudConfig, CloudNode, LoadProbe, start_cloud
from cloud_node.service import round_from_wire
from coordinator.convert import load_from_wire
from coordinator.registry import CoordinatorConfig
from coordinator.service import serve
from models.base import CausalLM, LMSession
from models.loader import load_lm
from node_runtime.agent import NodeAgent
from node_runtime.serving import CLIENT_ID_KEY, aio_channel
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

PROMPT = [1, 3, 20]
BIG = [("grpc.max_send_message_length", 64 * 1024 * 1024)]  # the server's cap is what answers
# Channels of one process share connections unless told not to; edges in their own processes
# (or with this option) each have their own connection, hence their own peer address.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


def run(coro: Coroutine[Any, Any, Any], limit_s: float = 90) -> Any:
    return asyncio.run(asyncio.wait_for(coro, limit_s))


@pytest.fixture(scope="module")
def target() -> CausalLM:
    lm, _ = load_lm("target")
    return lm


class Stream:
    """One Speculate stream, message by message."""

    def __init__(self, channel: grpc.aio.Channel, client: str = "") -> None:
        meta = ((CLIENT_ID_KEY, client),) if client else None
        self.call = pb_grpc.CloudStub(channel).Speculate(timeout=60, metadata=meta)

    async def send(self, msg: pb.SpecRequest) -> None:
        await self.call.write(msg)

    async def ask(self, msg: pb.SpecRequest) -> pb.SpecReply:
        await self.call.write(msg)
        return await self.call.read()


def open_msg(sid: str, temperature: float = 0.0) -> pb.SpecRequest:
    sampling = pb.Sampling(temperature=temperature)
    return pb.SpecRequest(open=pb.OpenSession(session_id=sid, prompt=PROMPT, sampling=sampling))


def verify_msg(sid: str, rid: int, draft: Sequence[int], q: Sequence[pb.DraftDist] = ()) -> Any:
    v = pb.VerifyRequest(session_id=sid, round_id=rid, base_position=len(PROMPT), draft=draft, q=q)
    return pb.SpecRequest(verify=v)


async def with_cloud(
    lm: CausalLM, engine: EngineConfig, body: Callable[[CloudNode], Awaitable[Any]]
) -> Any:
    node = await start_cloud(lm, None, CloudConfig(engine=engine))
    try:
        return await body(node)
    finally:
        await node.stop(grace=0)


async def refused(awaitable: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await awaitable
    return info.value


# ---------------------------------------------------------------- heartbeats of a loaded cloud


def test_heartbeat_busy_fraction_stays_in_range_and_windows_are_independent(target) -> None:
    async def main() -> None:
        node = await start_cloud(target, None)
        now = [0.0]
        probe = LoadProbe(node.engine, clock=lambda: now[0])
        thread = node.engine.thread
        try:
            assert probe.heartbeat().busy_fraction == 0.0  # opens both windows
            assert probe.reading().busy_fraction == 0.0
            # a 3 s model call ends inside a 1 s window: counted when it ended, it reads as 3
            now[0], thread.busy_s = 1.0, thread.busy_s + 3.0
            load = probe.heartbeat()
            assert load.busy_fraction == 1.0
            load_from_wire(load)  # the coordinator takes it
            # telemetry samples between two heartbeats must not restart the heartbeat's window
            now[0], thread.busy_s = 1.5, thread.busy_s + 0.5
            assert probe.reading().busy_fraction == 1.0  # 3.5 s over its 1.5 s window
            now[0] = 2.0
            assert probe.heartbeat().busy_fraction == pytest.approx(0.5)  # 0.5 s over 1 s
            now[0] = 2.5
            assert probe.reading().busy_fraction == 0.0  # nothing since its own last sample
        finally:
            await node.stop(grace=0)

    run(main())


def test_a_loaded_cloud_keeps_heartbeating_without_reregistering(target) -> None:
    async def main() -> None:
        coord, address = await serve("127.0.0.1", 0, CoordinatorConfig(heartbeat_interval_s=0.05))
        node = await start_cloud(target, None)
        probe = LoadProbe(node.engine)
        info = pb.NodeInfo(
            role=pb.ROLE_CLOUD, address=node.address, models=[pb.ModelInfo(name="target")]
        )
        agent = NodeAgent(address, info, probe.heartbeat)
        try:
            assert await agent.start(wait_s=10)
            for _ in range(4):  # model calls longer than a heartbeat interval
                block = Blocker(node.engine.thread)
                await block.held()
                beats = agent.counts["heartbeats"]
                await until(lambda b=beats: agent.counts["heartbeats"] >= b + 3, "heartbeats")
                await block.done()
            beats = agent.counts["heartbeats"]
            await until(lambda: agent.counts["heartbeats"] >= beats + 2, "heartbeats after")
            assert agent.counts["refused_heartbeats"] == 0
            assert agent.counts["registrations"] == 1 and agent.counts["failures"] == 0
        finally:
            await agent.stop()
            await node.stop(grace=0)
            await coord.stop(0)

    run(main())


def test_a_refused_heartbeat_is_logged_not_a_reason_to_register_again() -> None:
    async def main() -> None:
        coord, address = await serve("127.0.0.1", 0, CoordinatorConfig(heartbeat_interval_s=0.05))
        info = pb.NodeInfo(
            role=pb.ROLE_CLOUD, address="127.0.0.1:7300", models=[pb.ModelInfo(name="target")]
        )
        agent = NodeAgent(address, info, lambda: pb.NodeLoad(busy_fraction=2.0))
        try:
            assert await agent.start(wait_s=10)
            await until(lambda: agent.counts["refused_heartbeats"] >= 5, "refused heartbeats")
            assert agent.counts["registrations"] == 1 and agent.registered
            assert "busy_fraction" in agent.last_error
            listed = coord.servicer.registry.snapshot()  # kept alive by the fallback heartbeats
            assert agent.node_id in {s.info.node_id for s in listed.nodes}
        finally:
            await agent.stop()
            await coord.stop(0)

    run(main())


# ---------------------------------------------------------------- oversized verify messages


def huge_verify(sid: str, drafts: int = 300_000) -> pb.SpecRequest:
    one = pb.DraftDist(ids=[5], probs=[1.0])
    return verify_msg(sid, 1, [5] * drafts, [one] * drafts)


def test_a_huge_verify_message_is_refused_before_any_work(target) -> None:
    msg = huge_verify("s")
    assert 3_000_000 < msg.ByteSize() < 4 * 1024 * 1024  # under the message cap
    tracemalloc.start()
    try:
        with pytest.raises(RequestError, match="draft length 300000"):
            round_from_wire(msg.verify, target.vocab_size, 16)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20_000_000  # a dense q would be 300k x vocab float64 (266 MB)

    async def body(node: CloudNode) -> None:
        async with aio_channel(node.address, options=BIG) as ch:
            s = Stream(ch)
            assert (await s.ask(open_msg("s", 1.0))).opened.position == len(PROMPT)
            err = await refused(s.ask(msg))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "draft length 300000" in (err.details() or "")
            reply = await pb_grpc.CloudStub(ch).Metrics(pb.MetricsRequest(), timeout=10)
            assert reply.values["rejected_requests"] == 1
            assert reply.values["sessions_active"] == 0  # the refused stream freed its session

    run(with_cloud(target, EngineConfig(), body))


@pytest.mark.parametrize(
    ("q", "words"),
    [
        ([pb.DraftDist(ids=[5, 5], probs=[0.5, 0.5])], "q[0]: token id 5 appears twice"),
        ([pb.DraftDist(ids=[5], probs=[float("nan")])], "q[0]: probs must be finite"),
        ([pb.DraftDist(ids=[5, 6], probs=[1.5, -0.5])], "q[0]: probs must be finite and in"),
        ([pb.DraftDist(ids=[5, 999], probs=[0.5, 0.5])], "q[0]: token id 999 outside"),
        ([pb.DraftDist(ids=[5], probs=[1.0])] * 2, "q: 2 distributions for 1 drafts"),
        ([pb.DraftDist(ids=[5, 6], probs=[1.0])], "q[0]: ids and probs must be of one size"),
        ([pb.DraftDist(ids=[6], probs=[1.0])], "q[0]: draft token 5 has q = 0"),
    ],
)
def test_bad_q_rows_are_refused_naming_the_row(target, q, words) -> None:
    async def body(node: CloudNode) -> None:
        async with aio_channel(node.address) as ch:
            s = Stream(ch)
            await s.ask(open_msg("s", 1.0))
            err = await refused(s.ask(verify_msg("s", 1, [5], q)))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert words in (err.details() or "")

    run(with_cloud(target, EngineConfig(), body))


# ---------------------------------------------------------------- sessions and their streams


def test_a_session_belongs_to_the_stream_that_opened_it(target) -> None:
    async def body(node: CloudNode) -> None:
        async with aio_channel(node.address) as ch:
            a = Stream(ch)
            await a.ask(open_msg("s"))
            err = await refused(Stream(ch).ask(verify_msg("s", 1, [5])))
            assert err.code() == grpc.StatusCode.NOT_FOUND
            err = await refused(
                Stream(ch).ask(pb.SpecRequest(close=pb.CloseSession(session_id="s")))
            )
            assert err.code() == grpc.StatusCode.NOT_FOUND
            err = await refused(Stream(ch).ask(open_msg("s")))
            assert err.code() == grpc.StatusCode.ALREADY_EXISTS
            reply = await a.ask(verify_msg("s", 1, [5]))  # the owner's session is untouched
            assert reply.verdict.round_id == 1 and reply.verdict.base_position == len(PROMPT)
            closed = await a.ask(pb.SpecRequest(close=pb.CloseSession(session_id="s")))
            assert closed.closed.session_id == "s" and not node.engine.sessions

    run(with_cloud(target, EngineConfig(), body))


def test_idle_sessions_are_swept_without_a_new_open(target) -> None:
    async def body(node: CloudNode) -> None:
        async with aio_channel(node.address) as ch:
            s = Stream(ch)
            await s.ask(open_msg("idle"))
            await until(lambda: not node.engine.sessions, "the idle session is swept")
            assert node.engine.metrics()["expired_sessions"] == 1
            err = await refused(s.ask(verify_msg("idle", 1, [5])))
            assert err.code() == grpc.StatusCode.NOT_FOUND

    run(with_cloud(target, EngineConfig(session_ttl_s=0.2), body))


def test_one_client_cannot_take_every_session(target) -> None:
    async def body(node: CloudNode) -> None:
        async with (
            aio_channel(node.address, options=OWN_CONNECTION) as a,
            aio_channel(node.address, options=OWN_CONNECTION) as b,
        ):
            first = Stream(a)
            for sid in ("a1", "a2"):
                await first.ask(open_msg(sid))
            err = await refused(Stream(a).ask(open_msg("a3")))
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "its share" in (err.details() or "")
            # another edge on the same host, over its own connection, still gets sessions
            other = Stream(b)
            for sid in ("b1", "b2"):
                assert (await other.ask(open_msg(sid))).opened.session_id == sid
            # a client id in metadata makes two connections one client
            held = [Stream(a, client="edge-7"), Stream(b, client="edge-7")]  # kept open
            await held[0].ask(open_msg("c1"))
            await held[1].ask(open_msg("c2"))
            err = await refused(Stream(b, client="edge-7").ask(open_msg("c3")))
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "'id:edge-7' holds 2 sessions" in (err.details() or "")

    run(with_cloud(target, EngineConfig(max_sessions=8, max_client_sessions=2), body))


# ---------------------------------------------------------------- generation and the model thread


def test_verify_goes_before_generation_queued_earlier() -> None:
    async def main() -> list[str]:
        thread, order = ModelThread(), []
        block = Blocker(thread)
        await block.held()
        calls = [
            asyncio.create_task(thread.run(lambda n=n: order.append(n), p))
            for n, p in [("gen1", Priority.GENERATE), ("gen2", Priority.GENERATE)]
        ]
        await until(lambda: thread.waiting == 2, "generation waits")
        calls.append(asyncio.create_task(thread.run(lambda: order.append("step"), Priority.STEPS)))
        calls.append(asyncio.create_task(thread.run(lambda: order.append("ver"), Priority.VERIFY)))
        await until(lambda: thread.waiting == 4, "all wait")
        await block.done()
        await asyncio.gather(*calls)
        thread.shutdown()
        return order

    assert run(main()) == ["ver", "step", "gen1", "gen2"]


class Watched:
    """The target, noting how many generation-only passes had run when each pass holding verify
    rounds ran."""

    def __init__(self, lm: CausalLM) -> None:
        self.lm, self.name, self.vocab_size, self.max_len = lm, lm.name, lm.vocab_size, lm.max_len
        self.node: CloudNode | None = None
        self.verify_after: list[int] = []
        self.generation_passes = 0
        self.fail_generation = False

    def session(self) -> LMSession:
        return self.lm.session()

    def extend_batch(
        self, sessions: Sequence[LMSession], tokens: Sequence[Sequence[int]]
    ) -> list[np.ndarray]:
        assert self.node is not None
        engine = self.node.engine
        verifying = {id(s.lm_session) for s in engine.sessions.values()}
        if any(id(s) in verifying for s in sessions):
            self.verify_after.append(self.generation_passes)
        elif self.fail_generation:
            raise RuntimeError("simulated model fault")
        else:
            self.generation_passes += 1
        return self.lm.extend_batch(sessions, tokens)


def test_generation_is_bounded_fair_and_never_ahead_of_verify_rounds(target) -> None:
    watched = Watched(target)
    config = EngineConfig(max_generations=4, max_client_generations=2, generate_batch=2)

    async def body(node: CloudNode) -> None:
        watched.node = node
        req = pb.GenerateRequest(prompt=PROMPT, max_new_tokens=60)
        async with (
            aio_channel(node.address, options=OWN_CONNECTION) as a,
            aio_channel(node.address, options=OWN_CONNECTION) as b,
        ):
            s = Stream(a)
            await s.ask(open_msg("v"))
            block = Blocker(node.engine.thread)
            await block.held()
            gens = [
                asyncio.ensure_future(pb_grpc.CloudStub(ch).Generate(req, timeout=60))
                for ch in (a, a, a, b, b, b)
            ]
            await until(lambda: node.engine.stats.rejected == 2, "two refusals")
            assert node.engine.generations.active == 4
            await until(lambda: node.engine.thread.waiting == 1, "the model loop waits")
            assert not node.engine.thread.urgent_waiting()  # for generation only, so far
            await s.send(verify_msg("v", 1, [5, 6]))
            # the round raises the loop's waiting turn to verify priority
            await until(node.engine.thread.urgent_waiting, "the round waits")
            await block.done()
            verdict = (await s.call.read()).verdict
            outcomes = await asyncio.gather(*gens, return_exceptions=True)
        assert verdict.round_id == 1
        errors = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
        details = sorted(e.details() or "" for e in errors)
        assert [e.code() for e in errors] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
        assert "its share" in details[0] and "generation queue full" in details[1]
        done = [o for o in outcomes if isinstance(o, pb.GenerateReply)]
        assert len(done) == 4 and all(len(r.tokens) == 60 for r in done)
        assert watched.verify_after == [0]  # no generation-only pass went before the round
        assert node.engine.stats.rejected == 2  # each refusal counted once

    run(with_cloud(watched, config, body))  # type: ignore[arg-type]


def test_a_full_verify_queue_is_refused_and_counted_once(target) -> None:
    async def body(node: CloudNode) -> None:
        async with aio_channel(node.address) as ch:
            streams = {sid: Stream(ch) for sid in ("x", "y", "z")}
            for sid, s in streams.items():
                await s.ask(open_msg(sid))
            block = Blocker(node.engine.thread)
            await block.held()
            await streams["x"].send(verify_msg("x", 1, [5]))
            await until(lambda: node.engine.queue_depth == 1, "x waits for an iteration")
            err = await refused(streams["z"].ask(verify_msg("z", 1, [5])))
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "verify queue full" in (err.details() or "")
            await block.done()
            assert (await streams["x"].call.read()).verdict.round_id == 1
            assert (await streams["y"].ask(verify_msg("y", 1, [5]))).verdict.round_id == 1
            assert node.engine.stats.rejected == 1
            assert node.engine.metrics()["rejected_requests"] == 1

    run(with_cloud(target, EngineConfig(queue_limit=1, max_batch=1), body))


def test_a_model_failure_is_internal_with_an_id_and_the_node_keeps_serving(target) -> None:
    watched = Watched(target)

    async def body(node: CloudNode) -> None:
        watched.node = node
        async with aio_channel(node.address) as ch:
            stub = pb_grpc.CloudStub(ch)
            req = pb.GenerateRequest(prompt=PROMPT, max_new_tokens=4)
            watched.fail_generation = True
            err = await refused(stub.Generate(req, timeout=30))
            assert err.code() == grpc.StatusCode.INTERNAL
            assert "internal error (id" in (err.details() or "")
            watched.fail_generation = False
            assert len((await stub.Generate(req, timeout=30)).tokens) == 4
            err = await refused(stub.Generate(pb.GenerateRequest(prompt=[999]), timeout=30))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT

    run(with_cloud(watched, EngineConfig(), body))  # type: ignore[arg-type]


class Paused(Watched):
    """The target, pausing in its third generation pass until the test lets it go on."""

    def __init__(self, lm: CausalLM) -> None:
        super().__init__(lm)
        self.in_third = threading.Event()
        self.go_on = threading.Event()

    def extend_batch(
        self, sessions: Sequence[LMSession], tokens: Sequence[Sequence[int]]
    ) -> list[np.ndarray]:
        assert self.node is not None
        verifying = {id(s.lm_session) for s in self.node.engine.sessions.values()}
        if any(id(s) in verifying for s in sessions):
            self.verify_after.append(self.generation_passes)
        else:
            self.generation_passes += 1
            if self.generation_passes == 3:
                self.in_third.set()
                self.go_on.wait(30)
        return self.lm.extend_batch(sessions, tokens)


def test_a_verify_round_waits_for_one_generation_pass_not_a_whole_call(target) -> None:
    """Generation runs many iterations per model-thread call, but a verify round that arrives
    meanwhile joins the next iteration."""
    paused = Paused(target)

    async def body(node: CloudNode) -> None:
        paused.node = node
        async with aio_channel(node.address, options=OWN_CONNECTION) as ch:
            s = Stream(ch)
            await s.ask(open_msg("v"))
            req = pb.GenerateRequest(prompt=PROMPT, max_new_tokens=60)
            gen = asyncio.ensure_future(pb_grpc.CloudStub(ch).Generate(req, timeout=60))
            await until(paused.in_third.is_set, "generation in its third pass")
            await s.send(verify_msg("v", 1, [5, 6]))
            await until(lambda: node.engine.queue_depth == 1, "the round waits for an iteration")
            paused.go_on.set()
            assert (await s.call.read()).verdict.round_id == 1
            assert len((await gen).tokens) == 60
        assert paused.verify_after == [3]  # the pass in progress finished, then the round ran

    run(with_cloud(paused, EngineConfig(), body))  # type: ignore[arg-type]
