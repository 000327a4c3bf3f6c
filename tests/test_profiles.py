"""The device profile table: complete, every figure sourced, and the roofline behaving as the
published hardware does (memory-bound decode, compute-bound past ~150 tokens on an A100)."""

from __future__ import annotations

import dataclasses

import pytest

from node_runtime.profiles import (
    CHECKS,
    PROFILES,
    CallKind,
    Cited,
    cost_ms,
    crossover_tokens,
    describe,
    draft_ms_per_token,
    get_profile,
    kv_capacity_tokens,
    prefill_ms_per_token,
)

A100_8B = "a100/llama3-8b-bf16"


def test_every_required_device_model_pair_is_in_the_table() -> None:
    names = set(PROFILES)
    edge = {p.name for p in PROFILES.values() if p.role == "edge"}
    assert any(n.startswith("rpi5/") for n in edge)
    assert any(n.startswith("orin-nano") for n in edge)
    assert any(n.startswith("laptop") for n in edge)
    for gpu in ("a100", "h100"):
        assert any(n.startswith(gpu) and "-8b-" in n for n in names), gpu
        assert any(n.startswith(gpu) and "-70b-" in n for n in names), gpu
    for p in PROFILES.values():
        if p.role == "edge":  # drafters of 0.1-1.3B at 4 or 8 bits
            assert 0.1 <= p.params_b.value <= 1.3
            assert p.name.endswith(("-q4", "-q8"))


def test_every_figure_has_a_value_and_a_source() -> None:
    for p in PROFILES.values():
        figures = p.figures()
        cited = [f.name for f in dataclasses.fields(p) if f.type in ("Cited", "Cited | None")]
        assert set(cited) - {"usd_per_hour"} <= set(figures), p.name
        for field, fig in figures.items():
            assert isinstance(fig, Cited)
            assert fig.value >= 0 and fig.source.strip(), (p.name, field)
        assert (p.usd_per_hour is not None) == (p.role == "cloud"), p.name


def test_gpu_figures_are_the_datasheet_peaks_times_the_gpus() -> None:
    a100, h100 = get_profile(A100_8B), get_profile("h100/llama3-8b-bf16")
    assert (a100.bandwidth_gbs.value, a100.tflops.value) == (2039.0, 312.0)
    assert (h100.bandwidth_gbs.value, h100.tflops.value) == (3350.0, 989.0)
    tp4 = get_profile("a100x4/llama3-70b-bf16")
    assert tp4.bandwidth_gbs.value == 4 * 2039.0 and tp4.memory_gb.value == 320.0


def test_decode_at_batch_1_is_memory_bound() -> None:
    p = get_profile(A100_8B)
    one = cost_ms(p, CallKind.DECODE, 1, 1, 0)
    weights_ms = p.weights_gb.value / p.bandwidth_gbs.value * 1e3
    assert one == pytest.approx(p.overhead_ms.value + weights_ms, rel=1e-3)
    # 32 sequences cost barely more than 1: the weights are read once for all of them
    assert cost_ms(p, CallKind.DECODE, 32, 1, 0) < 1.01 * one


def test_a100_bf16_turns_compute_bound_near_150_tokens_per_step() -> None:
    p = get_profile(A100_8B)
    assert crossover_tokens(p) == pytest.approx(312 / 2.039, rel=0.01)  # ~153
    flat = cost_ms(p, CallKind.VERIFY, 1, 100, 0)
    assert cost_ms(p, CallKind.VERIFY, 1, 140, 0) == pytest.approx(flat, rel=0.01)
    big = cost_ms(p, CallKind.VERIFY, 1, 600, 0)
    compute = 2 * p.params_b.value * 1e9 * 600 / (p.tflops.value * 1e12) * 1e3
    assert big > compute + p.overhead_ms.value > 1.5 * flat
    # 32 verify rounds of k+1 = 5 tokens (160 tokens) are no longer free
    assert cost_ms(p, CallKind.VERIFY, 32, 5, 0) > cost_ms(p, CallKind.DECODE, 32, 1, 0)


def test_h100_crossover_is_higher_than_a100s() -> None:
    assert crossover_tokens(get_profile("h100/llama3-8b-bf16")) > 250


def test_edge_profiles_reproduce_the_published_rates_they_come_from() -> None:
    pi = get_profile("rpi5/tinyllama-1.1b-q8")  # 9 tok/s generation, 35 tok/s prompt
    assert draft_ms_per_token(pi, context=0) == pytest.approx(1000 / 9, rel=0.02)
    assert prefill_ms_per_token(pi, prompt=64) == pytest.approx(1000 / 35, rel=0.05)
    orin = get_profile("orin-nano-super/smollm2-135m-q4")  # 165.2 tok/s
    assert draft_ms_per_token(orin, context=0) == pytest.approx(1000 / 165.2, rel=0.02)
    # a drafter token on a Pi or a Jetson costs 6-120 ms; a target token on a GPU 5-30 ms
    for p in PROFILES.values():
        ms = draft_ms_per_token(p)
        assert (5 <= ms <= 120) if p.role == "edge" else (5 <= ms <= 30), (p.name, ms)


def test_kv_cache_costs_bandwidth_at_long_context() -> None:
    p = get_profile("a100x4/llama3-70b-bf16")
    short = cost_ms(p, CallKind.DECODE, 32, 1, 100)
    long = cost_ms(p, CallKind.DECODE, 32, 1, 4000)
    kv_ms = 32 * 3900 * p.kv_kb_per_token.value * 1e3 / (p.bandwidth_gbs.value * 1e9) * 1e3
    assert long - short == pytest.approx(kv_ms, rel=0.01)
    assert kv_capacity_tokens(p) > 100_000


def test_bad_call_shapes_are_refused() -> None:
    p = get_profile(A100_8B)
    with pytest.raises(ValueError, match="batch"):
        cost_ms(p, CallKind.VERIFY, 0, 5, 0)
    with pytest.raises(ValueError, match="1 token per sequence"):
        cost_ms(p, CallKind.DECODE, 4, 3, 0)


def test_unknown_profile_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="rpi5/smollm2-135m-q8") as err:
        get_profile("rpi6/gpt-9")
    assert "rpi6/gpt-9" in str(err.value)


def test_checks_against_published_latencies_land_in_a_stated_band() -> None:
    ratios = {(c.profile, c.what): c.model_ms() / c.published_ms for c in CHECKS}
    assert ratios[("a100/llama2-7b-fp16", "request, batch 1")] == pytest.approx(1.0, abs=0.02)
    # independent figures: within 20% for decode-heavy requests, and never slower than
    # published (peak bandwidth and FLOPS are upper bounds on what an engine reaches)
    assert ratios[("a100/llama2-7b-fp16", "request, batch 8")] == pytest.approx(0.84, abs=0.05)
    assert all(0.4 < r <= 1.02 for r in ratios.values()), ratios
    text = describe()
    assert all(name in text for name in PROFILES) and "ratio" in text
