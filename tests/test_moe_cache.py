"""The resident tier's policies, Belady's bound, the per-miss cost model and int8 experts."""

from __future__ import annotations

import random

import numpy as np
import pytest

from models.moe.belady import Belady, replay, replay_named
from models.moe.cache import POLICIES, ExpertCache, make_policy
from models.moe.costs import LinkModel, MissAction, miss_costs
from models.moe.layouts import ExpertKey
from models.moe.quant import dequantize_rows, quantize_rows

A, B, C, D = (ExpertKey(0, e) for e in range(4))


def test_policies_on_a_known_trace() -> None:
    trace = [(A,), (B,), (A,), (C,), (B,), (A,)]
    # LRU: A B miss, A hit, C evicts B, B evicts A, A evicts C -> 1 hit
    assert replay_named(trace, 2, 1, "lru", 1).hits == 1
    # LFU: A counts 2, so C evicts B, B evicts C, A hits -> 2 hits
    assert replay_named(trace, 2, 1, "lfu", 1).hits == 2
    # MIN: C evicts A (next use step 5) over B (step 4); B hits; A evicts C -> 2 hits
    assert replay_named(trace, 2, 1, "belady", 1).hits == 2
    assert replay_named(trace, 2, 1, "belady", 1).requests == 6


def test_belady_beats_every_policy_on_random_traces() -> None:
    rng = random.Random(5)
    for _ in range(20):
        keys = [ExpertKey(rng.randrange(3), rng.randrange(6)) for _ in range(200)]
        trace = [(k,) for k in keys]
        cap = rng.randint(2, 10)
        bound = replay(trace, cap, 1, Belady(trace)).hits
        for name in POLICIES:
            assert replay_named(trace, cap, 1, name, 3).hits <= bound


def test_a_step_keeps_its_own_experts_resident() -> None:
    trace = [(A, B), (C, D), (A, B)]
    for name in [*POLICIES, "belady"]:
        r = replay_named(trace, 2, 1, name, 1)
        assert r.hits == 0 and r.requests == 6  # no step evicts its sibling to load itself


def test_cache_holds_its_byte_budget() -> None:
    cache: ExpertCache[str] = ExpertCache(100, make_policy("lru", 2))
    assert cache.put(A, "a", 40) == []
    assert cache.put(B, "b", 40) == []
    assert cache.put(C, "c", 40, pinned=[A]) == [B]  # B, not the pinned A, is dropped
    assert cache.used_bytes == 80 and A in cache and C in cache
    assert cache.put(D, "d", 101) == []  # bigger than the whole budget: not inserted
    assert D not in cache and cache.used_bytes <= cache.budget_bytes
    assert cache.get(A) == "a" and cache.get(B) is None
    assert (cache.stats.hits, cache.stats.misses) == (1, 1)


def test_shallow_favoring_gives_early_layers_more_room() -> None:
    rng = random.Random(1)
    trace = [(ExpertKey(layer, rng.randrange(8)),) for _ in range(400) for layer in range(4)]
    policy = make_policy("shallow", 4)
    cache: ExpertCache[None] = ExpertCache(12, policy)
    for (k,) in trace:
        if cache.get(k) is None:
            cache.put(k, None, 1, pinned=[k])
    held = [sum(1 for k in cache.keys() if k.layer == layer) for layer in range(4)]
    assert held[0] > held[3]
    assert replay_named(trace, 12, 1, "shallow", 4).hits > 0


def test_unknown_policy_is_named() -> None:
    with pytest.raises(ValueError, match="policy"):
        make_policy("fifo", 2)


def test_cost_model_choices() -> None:
    slow = LinkModel(bandwidth_bytes_s=12.5e6, rtt_s=0.02)  # 100 Mbit/s, 20 ms
    # a 12.6 MB expert and one token: shipping the token wins by far
    big = miss_costs(slow, 12_600_000, 1, 2048, 0.001, 0.001)
    assert big.best() is MissAction.REMOTE and big.fetch_s > 1.0
    assert big.best(allow_remote=False) is MissAction.FETCH
    # a small expert and a long prompt: moving the weights costs less than the activations
    prompt = miss_costs(slow, 100_000, 4000, 128, 0.001, 0.001)
    assert prompt.best() is MissAction.FETCH
    # a prefetch that lands in 2 ms beats a fresh round trip
    late = miss_costs(slow, 12_600_000, 1, 2048, 0.001, 0.001, inflight_remaining_s=0.002)
    assert late.best() is MissAction.WAIT
    # expert bytes queued on the link delay a fetch, not remote compute's small messages
    queued = miss_costs(slow, 100_000, 1, 128, 0.0, 0.0, queued_bytes=1_250_000)
    assert queued.fetch_s == pytest.approx(0.1 + 0.02 + 100_000 / 12.5e6)
    assert queued.remote_s == pytest.approx(0.02 + 2 * 128 * 4 / 12.5e6)


def test_int8_experts_are_close_but_lossy() -> None:
    w = np.random.default_rng(0).normal(size=(64, 128)).astype(np.float32)
    q, scale = quantize_rows(w)
    back = dequantize_rows(q, scale)
    assert q.dtype == np.int8 and q.nbytes * 4 == w.nbytes
    err = np.abs(back - w).max(axis=1)
    assert np.all(err <= scale / 2 + 1e-6)
    assert not np.array_equal(back, w)


def test_trace_replay_at_scale_picks_remote_compute_for_huge_experts() -> None:
    from models.moe.simulate import SimConfig, SimSizes, simulate

    rng = random.Random(2)
    trace = [
        tuple(ExpertKey(layer, e) for e in sorted(rng.sample(range(8), 2)))
        for _ in range(50)
        for layer in range(4)
    ]
    rows = [(1, 1)] * len(trace)
    none: list[tuple[int, ...]] = [()] * len(trace)
    link = LinkModel(12.5e6, 0.02)
    huge = SimSizes(99_000_000, 4096, 2, 5e-4, 0.0, 2e-4, 3e-4, link)
    on_demand = simulate(
        trace, rows, none, none, 4, 2, huge, SimConfig(0, prefetch=False, remote=False)
    )
    full = simulate(trace, rows, none, none, 4, 2, huge, SimConfig(16 * 99_000_000))
    assert on_demand.hits == 0 and on_demand.fetched_bytes == 99_000_000 * on_demand.requests
    assert on_demand.decode_tokens == full.decode_tokens == 50
    assert full.actions.get("remote", 0) > 0
    assert full.decode_tokens_per_s > on_demand.decode_tokens_per_s
