"""Emulating a device profile: real model calls, padded to the profile's time (within 5%), and
calls slower than their profile counted as infeasible. Uses the trained bundled models."""

from __future__ import annotations

import dataclasses
import statistics
import time

import numpy as np
import pytest

from models.loader import load_lm
from node_runtime.emulation import (
    EmulatedLM,
    call_kind,
    call_ms,
    emulate,
    emulation_values,
)
from node_runtime.profiles import CallKind, Cited, get_profile
from node_runtime.serving import aio_channel


@pytest.fixture(scope="module")
def target():  # noqa: ANN201
    return load_lm("target")[0]


@pytest.fixture(scope="module")
def drafter():  # noqa: ANN201
    return load_lm("drafter")[0]


def _timed(lm: EmulatedLM, sessions: list, feeds: list[list[int]]) -> tuple[float, float]:
    """(wall ms, profile ms) of one call."""
    contexts = [s.length for s in sessions]
    want = call_ms(lm.profile, contexts, [len(f) for f in feeds])
    t0 = time.perf_counter()
    lm.extend_batch(sessions, feeds)
    return (time.perf_counter() - t0) * 1e3, want


def test_padded_calls_return_the_real_models_logits(target) -> None:
    emu = EmulatedLM(target, get_profile("a100x4/llama3-70b-bf16"))
    prompt = [1, 5, 9, 3]
    real, fake = target.session(), emu.session()
    np.testing.assert_array_equal(real.extend(prompt), fake.extend(prompt))
    np.testing.assert_array_equal(real.extend([4, 4]), fake.extend([4, 4]))
    fake.truncate(3)
    real.truncate(3)
    assert fake.length == real.length == 3
    assert emu.name == target.name and emu.max_len == target.max_len


def test_single_draft_calls_land_within_5_percent_of_a_pi5(drafter) -> None:
    # SmolLM2-135M on a Pi 5: ~14 ms a drafted token, far above the bundled drafter's real time
    emu = EmulatedLM(drafter, get_profile("rpi5/smollm2-135m-q8"))
    s = emu.session()
    s.extend([1, 2, 3, 4])
    walls, wants = zip(*(_timed(emu, [s], [[7]]) for _ in range(5)), strict=True)
    assert all(w >= want - 0.05 for w, want in zip(walls, wants, strict=True))
    assert statistics.median(walls) == pytest.approx(statistics.median(wants), rel=0.05)
    assert emu.stats.infeasible_calls == 0
    assert emu.by_kind[CallKind.DRAFT] == 5 and emu.by_kind[CallKind.PREFILL] == 1


def test_verify_batches_land_within_5_percent_of_four_a100s(target) -> None:
    emu = EmulatedLM(target, get_profile("a100x4/llama3-70b-bf16"))
    sessions = [emu.session() for _ in range(4)]
    for i, s in enumerate(sessions):
        s.extend([1] * (6 + 3 * i))  # different cache lengths in one batch
    walls, wants = [], []
    for _ in range(5):
        w, want = _timed(emu, sessions, [[2, 3, 4, 5, 6]] * 4)  # k+1 = 5 tokens each
        walls.append(w)
        wants.append(want)
        for s in sessions:
            s.truncate(s.length - 5)
    assert wants[0] > 20  # ~22 ms: 141 GB of weights over 8.2 TB/s, plus the step overhead
    assert all(w >= want - 0.05 for w, want in zip(walls, wants, strict=True))
    assert statistics.median(walls) == pytest.approx(statistics.median(wants), rel=0.05)
    assert emu.by_kind[CallKind.VERIFY] == 5 and emu.stats.infeasible_calls == 0
    values = emulation_values(emu)
    assert values["emulated_device:a100x4/llama3-70b-bf16"] == 1.0
    assert values["emulated_calls"] == 9 and values["emulated_padded_s"] > 0


def test_a_call_slower_than_its_profile_is_counted_infeasible(target) -> None:
    fast = dataclasses.replace(
        get_profile("h100/llama3-8b-bf16"),
        name="test/instant",
        overhead_ms=Cited(0.0, "test"),
        bandwidth_gbs=Cited(1e12, "test"),
        tflops=Cited(1e9, "test"),
    )
    emu = EmulatedLM(target, fast)
    s = emu.session()
    s.extend([1, 2, 3])
    s.extend([4])
    st = emu.stats
    assert st.calls == 2 and st.infeasible_calls == 2
    assert st.worst_overshoot_ms > 0 and st.padded_ms == 0
    assert emulation_values(emu)["emulated_infeasible_calls"] == 2


class _FakeLM:
    """Advances a fake clock by ``real_ms`` per call, so padding can be checked exactly."""

    name, vocab_size, max_len = "fake", 10, 100

    def __init__(self, clock: list[float], real_ms: float) -> None:
        self.clock, self.real_ms = clock, real_ms

    def session(self) -> _FakeSession:
        return _FakeSession()

    def extend_batch(self, sessions, tokens):  # noqa: ANN001, ANN201
        self.clock[0] += self.real_ms / 1e3
        for s, t in zip(sessions, tokens, strict=True):
            s.length += len(t)
        return [np.zeros((len(t), 10)) for t in tokens]


class _FakeSession:
    length = 0

    def truncate(self, length: int) -> None:
        self.length = length


def test_padding_is_the_profile_time_minus_the_real_time() -> None:
    clock, waits = [0.0], []
    profile = get_profile("a100/llama3-8b-bf16")
    emu = EmulatedLM(_FakeLM(clock, 3.0), profile, clock=lambda: clock[0], wait=waits.append)
    s = emu.session()
    s.extend([1, 2])
    want = call_ms(profile, [0], [2])
    assert waits == [pytest.approx((want - 3.0) / 1e3)]
    assert emu.stats.padded_ms == pytest.approx(want - 3.0)
    assert emu.stats.device_ms == pytest.approx(want)


def test_sessions_of_another_model_are_refused(target) -> None:
    a = EmulatedLM(target, get_profile("a100/llama3-8b-bf16"))
    b = EmulatedLM(target, get_profile("a100/llama3-8b-bf16"))
    with pytest.raises(ValueError, match="another model"):
        a.extend_batch([b.session()], [[1]])
    with pytest.raises(ValueError, match="another model"):
        a.extend_batch([target.session()], [[1]])


def test_call_kinds_and_no_emulation_by_default(target) -> None:
    assert call_kind([0, 5], [8, 1], "cloud") is CallKind.PREFILL
    assert call_kind([5, 6], [1, 1], "cloud") is CallKind.DECODE
    assert call_kind([5], [1], "edge") is CallKind.DRAFT
    assert call_kind([5, 6], [5, 1], "cloud") is CallKind.VERIFY
    assert emulate(target, "cpu") is target and emulation_values(target) == {}
    assert isinstance(emulate(target, "h100/llama3-8b-bf16"), EmulatedLM)
    with pytest.raises(ValueError, match="known:"):
        emulate(target, "tpu/whatever")


def test_nodes_report_the_emulated_device_in_metrics_and_telemetry(target, drafter) -> None:
    import asyncio

    from cloud_node.node import LoadProbe, start_cloud
    from edge_node.node import EdgeNodeConfig, _with_emulation, start_edge
    from models.task import WordTokenizer
    from tandem_wire.v1 import tandem_pb2 as pb
    from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

    cloud_lm = emulate(target, "h100/llama3-8b-bf16")
    edge_lm = emulate(drafter, "orin-nano-super/smollm2-135m-q4")
    tok = WordTokenizer()

    async def body() -> None:
        cloud = await start_cloud(cloud_lm, tok.eos_id)
        edge = await start_edge(edge_lm, tok, EdgeNodeConfig(clouds=(cloud.address,)))
        try:
            async with aio_channel(cloud.address) as ch:
                reply = await pb_grpc.CloudStub(ch).Generate(
                    pb.GenerateRequest(prompt=[tok.bos_id, 5, 6], max_new_tokens=3), timeout=30
                )
                assert reply.tokens
                values = (
                    await pb_grpc.CloudStub(ch).Metrics(pb.MetricsRequest(), timeout=10)
                ).values
            assert values["emulated_device:h100/llama3-8b-bf16"] == 1.0
            assert values["emulated_calls"] >= 1 and values["emulated_device_s"] > 0
            assert "emulated_infeasible_calls" in values
            async with aio_channel(edge.address) as ch:
                values = (
                    await pb_grpc.EdgeStub(ch).Metrics(pb.MetricsRequest(), timeout=10)
                ).values
            assert values["emulated_device:orin-nano-super/smollm2-135m-q4"] == 1.0
            reading = LoadProbe(cloud.engine).reading()
            assert reading.extra["emulated_device:h100/llama3-8b-bf16"] == 1.0
            sample = edge.servicer.stats.reading(0, edge.servicer.clouds)
            assert "emulated_calls" in _with_emulation(sample, edge_lm).extra
        finally:
            await edge.stop()
            await cloud.stop()

    asyncio.run(asyncio.wait_for(body(), 60))
