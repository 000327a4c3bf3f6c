"""Token speculation over a real gRPC cloud node on 127.0.0.1: lossless, robust, batched."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import grpc
import numpy as np
import pytest

from cloud_node.engine import EngineConfig
from cloud_node.node import CloudConfig, start_cloud
from edge_node.clouds import CloudDirectory
from edge_node.speculation import SpecSettings, Speculator
from models.generate import generate
from models.sampling import SamplingParams
from models.task import generate as make_problems
from node_runtime.serving import aio_channel
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


def prompts(tok, n: int) -> list[list[int]]:
    return [[tok.bos_id, *tok.encode(p.question)] for p in make_problems(n, seed=7)]


def test_greedy_speculation_equals_target_greedy(tok, target_lm, drafter_lm) -> None:
    async def main() -> list[tuple[list[int], list[int], int]]:
        node = await start_cloud(target_lm, tok.eos_id, CloudConfig())
        clouds = CloudDirectory("edge-test", static=[node.address])
        spec = Speculator(drafter_lm)
        out = []
        try:
            for i, p in enumerate(prompts(tok, 4)):
                params = SamplingParams(0.0, seed=i)
                settings = SpecSettings(max_new=20, eos_id=None, k=3, k_policy="heuristic")
                res = await spec.run(p, params, settings, clouds.pick)
                ref = generate(target_lm, p, params, 20, None)
                out.append((res.tokens, ref, res.account.verify_rounds))
                assert not res.degraded
        finally:
            await clouds.close()
            await node.stop()
        return out

    for spec_tokens, ref, rounds in run(main()):
        assert spec_tokens == ref
        assert 0 < rounds <= 20


def test_drafter_equal_to_target_accepts_everything(tok, target_lm) -> None:
    async def main() -> tuple[int, int, int]:
        node = await start_cloud(target_lm, tok.eos_id)
        clouds = CloudDirectory("edge-test", static=[node.address])
        try:
            res = await Speculator(target_lm).run(
                prompts(tok, 1)[0],
                SamplingParams(0.0),
                SpecSettings(max_new=16, eos_id=None, k=3, k_policy="fixed"),
                clouds.pick,
            )
        finally:
            await clouds.close()
            await node.stop()
        a = res.account
        return a.drafted_tokens, a.accepted_tokens, a.verify_rounds

    drafted, accepted, rounds = run(main())
    assert accepted == drafted
    assert rounds == 4  # 16 tokens at 3 drafts + 1 bonus each


def test_sampled_speculation_is_reproducible_from_seed(tok, target_lm, drafter_lm) -> None:
    async def once(seed: int) -> list[int]:
        node = await start_cloud(target_lm, tok.eos_id)
        clouds = CloudDirectory("edge-test", static=[node.address])
        try:
            res = await Speculator(drafter_lm).run(
                prompts(tok, 1)[0],
                SamplingParams(1.0, 0.9, seed),
                SpecSettings(max_new=24, eos_id=None, k=4),
                clouds.pick,
            )
        finally:
            await clouds.close()
            await node.stop()
        return res.tokens

    assert run(once(5)) == run(once(5))
    assert run(once(5)) != run(once(6))


async def _stream(address: str, messages: list[pb.SpecRequest]) -> list[pb.SpecReply]:
    # the client may send past the server's cap, so the server's own limit is what answers
    big = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
    async with aio_channel(address, options=big) as ch:
        call = pb_grpc.CloudStub(ch).Speculate(timeout=10)
        out = []
        for m in messages:
            await call.write(m)
            out.append(await call.read())
        await call.done_writing()
        return out


def _open(sid: str, prompt: list[int], temperature: float = 0.0) -> pb.SpecRequest:
    return pb.SpecRequest(
        open=pb.OpenSession(
            session_id=sid, prompt=prompt, sampling=pb.Sampling(temperature=temperature)
        )
    )


def _verify(sid: str, rid: int, base: int, draft: list[int]) -> pb.SpecRequest:
    return pb.SpecRequest(
        verify=pb.VerifyRequest(session_id=sid, round_id=rid, base_position=base, draft=draft)
    )


@pytest.mark.parametrize(
    ("messages", "code", "words"),
    [
        ([_verify("nobody", 1, 3, [5])], grpc.StatusCode.NOT_FOUND, "unknown session"),
        ([_open("s", [1, 3, 999])], grpc.StatusCode.INVALID_ARGUMENT, "token id 999"),
        (
            [_open("s", [1, 3]), _verify("s", 1, 2, [5, -1])],
            grpc.StatusCode.INVALID_ARGUMENT,
            "token id -1",
        ),
        (
            [_open("s", [1, 3]), _verify("s", 1, 2, [5] * 17)],
            grpc.StatusCode.INVALID_ARGUMENT,
            "draft length 17",
        ),
        (
            [_open("s", [1, 3]), _verify("s", 1, 9, [5])],
            grpc.StatusCode.INVALID_ARGUMENT,
            "base_position 9",
        ),
        (
            [_open("s", [1, 3], 1.0), _verify("s", 1, 2, [5])],
            grpc.StatusCode.INVALID_ARGUMENT,
            "q:",
        ),
        ([_open("", [1, 3])], grpc.StatusCode.INVALID_ARGUMENT, "session_id"),
        ([pb.SpecRequest()], grpc.StatusCode.INVALID_ARGUMENT, "one of open/verify/close"),
        ([_open("s", [1] * 5_000_000)], grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
    ],
)
def test_bad_input_gets_a_named_error_and_the_server_keeps_serving(
    tok, target_lm, messages, code, words
) -> None:
    async def main() -> tuple[grpc.aio.AioRpcError, list[pb.SpecReply]]:
        node = await start_cloud(
            target_lm, tok.eos_id, CloudConfig(engine=EngineConfig(max_draft=16))
        )
        try:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await _stream(node.address, messages)
            good = await _stream(node.address, [_open("ok", [1, 3]), _verify("ok", 1, 2, [5, 6])])
        finally:
            await node.stop()
        return info.value, good

    err, good = run(main())
    assert err.code() == code
    assert words in (err.details() or "")
    assert good[1].verdict.round_id == 1 and good[1].verdict.position >= 3


def test_a_retried_round_is_applied_once(tok, target_lm) -> None:
    async def main() -> list[pb.SpecReply]:
        node = await start_cloud(target_lm, tok.eos_id)
        try:
            return await _stream(
                node.address,
                [
                    _open("s", [1, 3, 20]),
                    _verify("s", 7, 3, [5, 6, 7]),
                    _verify("s", 7, 3, [5, 6, 7]),
                ],
            )
        finally:
            await node.stop()

    _, first, again = run(main())
    assert first.verdict == again.verdict
    assert first.verdict.position == 3 + first.verdict.accepted + 1


def test_concurrent_sessions_are_batched(tok, target_lm, drafter_lm) -> None:
    async def main() -> dict[str, float]:
        # a short fill wait makes the batching independent of how busy the machine is
        node = await start_cloud(
            target_lm, tok.eos_id, CloudConfig(engine=EngineConfig(max_wait_ms=3.0))
        )
        clouds = CloudDirectory("edge-test", static=[node.address])
        specs = [Speculator(drafter_lm) for _ in range(8)]
        try:
            results = await asyncio.gather(
                *(
                    s.run(p, SamplingParams(0.0), SpecSettings(24, None, 2, "fixed"), clouds.pick)
                    for s, p in zip(specs, prompts(tok, 8), strict=True)
                )
            )
            for p, r in zip(prompts(tok, 8), results, strict=True):
                assert r.tokens == generate(target_lm, p, SamplingParams(0.0), 24, None)
            for _ in range(200):  # closing is asynchronous: wait for the streams to end
                if not node.engine.sessions:
                    break
                await asyncio.sleep(0.01)
            return node.engine.metrics()
        finally:
            await clouds.close()
            await node.stop()

    m = run(main())
    assert m["mean_batch_size"] > 1.2  # rounds of different sessions shared passes
    assert m["sessions_active"] == 0  # every stream closed its session


def test_losing_the_cloud_fails_over_then_degrades(tok, target_lm, drafter_lm) -> None:
    async def main() -> tuple[Any, Any, list[int], str]:
        a = await start_cloud(target_lm, tok.eos_id)
        b = await start_cloud(target_lm, tok.eos_id)
        clouds = CloudDirectory("edge-test", static=[a.address, b.address])
        p = prompts(tok, 1)[0]
        ref = generate(target_lm, p, SamplingParams(0.0), 30, None)
        spec = Speculator(drafter_lm)
        stopper = asyncio.create_task(_stop_after_rounds(a, 2))
        moved = await spec.run(
            p, SamplingParams(0.0), SpecSettings(30, None, 2, "fixed"), clouds.pick
        )
        await stopper
        await b.stop()
        alone = await spec.run(
            p, SamplingParams(0.0), SpecSettings(30, None, 2, "fixed"), clouds.pick
        )
        await clouds.close()
        return moved, alone, ref, b.address

    moved, alone, ref, second = run(main())
    assert moved.tokens == ref and not moved.degraded
    assert moved.cloud_node == second
    assert alone.degraded and len(alone.tokens) == 30 and "no cloud" in alone.note


async def _stop_after_rounds(node: Any, rounds: int) -> None:
    while node.engine.stats.rounds < rounds:
        await asyncio.sleep(0.001)
    await node.stop(grace=0)


def test_rtt_policy_prefers_long_drafts_on_slow_links() -> None:
    from models.speculative import CostModel, rtt_aware_k

    fast = rtt_aware_k(0.8, CostModel(0.5, 1.0, 1.0, 0.2), 16)
    slow = rtt_aware_k(0.8, CostModel(200.0, 1.0, 1.0, 0.2), 16)
    assert slow > fast
    assert np.isclose(rtt_aware_k(0.0, CostModel(200.0, 1.0, 1.0, 0.2), 16), 1)


def test_a_revised_plan_moves_the_request_to_another_cloud_and_mode(tok, target_lm, drafter_lm):
    from edge_node.speculation import Hooks, Replan

    async def main() -> tuple[Any, list[tuple[int, str]], list[int], int, tuple[str, str]]:
        a = await start_cloud(target_lm, tok.eos_id)
        b = await start_cloud(target_lm, tok.eos_id)
        clouds = CloudDirectory("edge-test", static=[a.address])
        calls: list[tuple[int, str]] = []

        async def replan(left: int, current: str) -> Replan | None:
            calls.append((left, current))
            return Replan("cloud-only", (b.address, clouds.stub(b.address)), 0)

        p = prompts(tok, 1)[0]
        ref = generate(target_lm, p, SamplingParams(0.0), 30, None)
        res = await Speculator(drafter_lm).run(
            p,
            SamplingParams(0.0),
            SpecSettings(30, None, 2, "fixed"),
            clouds.pick,
            Hooks(replan=replan, replan_every=2),
        )
        generated = b.engine.stats.generated_tokens
        await clouds.close()
        await a.stop()
        await b.stop()
        return res, calls, ref, generated, (a.address, b.address)

    res, calls, ref, generated, (first, second) = run(main())
    assert res.tokens == ref  # still the target's output
    assert res.final_mode == "cloud-only" and calls[0][1] == first and res.cloud_node == second
    assert res.account.plan_revisions == 1 and res.account.verify_rounds == 2
    assert 0 < calls[0][0] < 30 and generated == calls[0][0]
