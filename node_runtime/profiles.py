"""Device profiles: what each model call costs on a named device running a named model.

One table, three users: nodes pad real model calls to it (``--device``, see
``node_runtime.emulation``), the coordinator's cost model predicts with it, and the simulator runs
on it. Pure and torch-free.

Every call is a step of the same roofline (the formula the issue prescribes):

    step ms = overhead + max(bytes read / bandwidth, FLOPs / compute)

- bytes read = weights + the KV cache of every sequence in the step (context + new tokens);
- FLOPs = 2 x parameters per new token + 4 x layers x d_model per (new token, attended position).

GPU profiles use the vendor's peak bandwidth and FLOPS (times the tensor-parallel GPUs) and a
fixed per-step overhead derived from a published latency. Edge profiles use *effective* bandwidth
and compute derived from published llama.cpp-style token rates: bandwidth = weight bytes x
generation tokens/s, compute = 2 x parameters x prompt tokens/s, so a batch-1 decode reproduces
the published generation rate and a long prompt the published prompt rate.

Every figure is a ``Cited``: its value and its public source, or ``derived: how``. ``CHECKS``
sets the model beside published per-step latencies; ``describe()`` prints how close it lands.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

# Sources, named once (full references in the README's "Device profiles" section).
A100_SHEET = "NVIDIA A100 datasheet (80GB SXM): 2,039 GB/s HBM2e, 312 TFLOPS bf16 dense, 400 W"
H100_SHEET = "NVIDIA H100 datasheet (SXM): 3.35 TB/s HBM3, 989 TFLOPS bf16 / 1,979 fp8 dense, 700 W"
NEMO = "NVIDIA NeMo Framework docs, Llama-2 inference performance (128 in / 20 out, TP1)"
NIM = "NVIDIA NIM LLM benchmarking docs 1.0.0, Llama-3.3-70B NIM 1.8.0, 2xH100 fp8 TP2"
TRTLLM = "TensorRT-LLM docs/source/performance.md (v0.5 low-latency table, batch 1)"
PRICES = "pricegpu.pages.dev 'H100 vs A100 cloud pricing' (2026): on-demand low end per GPU"
MATMUL = "J. Tunney, 'LLaMA Now Goes Faster on CPUs' (justine.lol/matmul, 2024-03-31)"
GEERLING = "geerlingguy/ai-benchmarks README: Pi 5 8GB, llama3.2:3b, 4.61 tok/s, 13.9 W peak"
SMOLHUB = "smolhub.com 'Tiny LLM Benchmark: Jetson Orin Nano Super 8GB' (llama.cpp CUDA, 25 W mode)"
JETSON_LAB = "Jetson AI Lab SLM chart (MLC q4f16_ft), quoted in dusty-nv/NanoLLM issue #38"
NORMIEBENCH = "brand-o/normiebench issue #8: Ryzen 7 8840U CPU, Llama 3.1 8B Q4_K_M llama-bench"


@dataclass(frozen=True)
class Cited:
    """A number with where it comes from."""

    value: float  # the figure, in the unit its field names
    source: str  # public source, or "derived: how" for a figure computed from cited ones


class CallKind(str, enum.Enum):
    """The kinds of model call a node makes; each is one step of the roofline."""

    DRAFT = "draft"  # an edge drafter's one-token step
    PREFILL = "prefill"  # a prompt fed into an empty or short cache
    DECODE = "decode"  # one new token per sequence (autoregressive generation)
    VERIFY = "verify"  # k+1 tokens per sequence scored in one pass


@dataclass(frozen=True)
class Profile:
    """One device running one model: the figures the roofline needs, each cited."""

    name: str  # "device/model", e.g. "a100x4/llama3-70b-bf16": the --device value
    device: str  # the hardware, for people
    model: str  # the model and its precision, for people
    role: str  # "edge" (drafter) or "cloud" (target)
    chips: int  # GPUs in tensor parallel (1 for edge devices)
    params_b: Cited  # parameters, billions
    weights_gb: Cited  # weight bytes read per step, GB
    kv_kb_per_token: Cited  # KV cache bytes per token of one sequence, KB (1 KB = 1000 B)
    layers: int  # transformer layers (attention FLOPs)
    d_model: int  # hidden size (attention FLOPs)
    bandwidth_gbs: Cited  # GB/s the step's reads run at, all chips
    tflops: Cited  # compute the step's FLOPs run at, all chips, TFLOPS
    overhead_ms: Cited  # fixed time per step: launches, all-reduces, sampling
    memory_gb: Cited  # device memory, all chips
    power_w: Cited  # power drawn while serving, all chips
    usd_per_hour: Cited | None  # rental price, all chips (clouds only)

    def figures(self) -> dict[str, Cited]:
        """Every cited figure by field name."""
        return {k: v for k, v in vars(self).items() if isinstance(v, Cited)}


def _d(how: str) -> str:
    return f"derived: {how}"


# --- cost functions (pure) ---------------------------------------------------------------------


def step_ms(p: Profile, new_tokens: int, kv_tokens: int, attended: float) -> float:
    """One forward pass: ``new_tokens`` fed, ``kv_tokens`` cached positions read, ``attended``
    (new token, position) pairs of attention."""
    read = p.weights_gb.value * 1e9 + kv_tokens * p.kv_kb_per_token.value * 1e3
    flops = 2 * p.params_b.value * 1e9 * new_tokens + 4 * p.layers * p.d_model * attended
    memory_ms = read / (p.bandwidth_gbs.value * 1e9) * 1e3
    compute_ms = flops / (p.tflops.value * 1e12) * 1e3
    return p.overhead_ms.value + max(memory_ms, compute_ms)


def cost_ms(
    p: Profile, kind: CallKind, batch: int, tokens_per_seq: float, context: float = 0.0
) -> float:
    """Device time of one call: ``batch`` sequences, each feeding ``tokens_per_seq`` new tokens
    after ``context`` cached ones (means over the batch are exact: the roofline is linear in them).

    DRAFT and DECODE feed one token per sequence; VERIFY feeds k+1; PREFILL feeds the prompt.
    """
    if batch < 1 or tokens_per_seq < 1 or context < 0:
        raise ValueError(
            f"cost: batch {batch} >= 1, tokens_per_seq {tokens_per_seq} >= 1, context {context}"
            " >= 0"
        )
    if kind in (CallKind.DRAFT, CallKind.DECODE) and tokens_per_seq != 1:
        raise ValueError(f"cost: a {kind.value} call feeds 1 token per sequence")
    new = batch * tokens_per_seq
    kv = batch * (context + tokens_per_seq)
    attended = new * (context + (tokens_per_seq + 1) / 2)  # causal: token i sees context + i
    return step_ms(p, round(new), round(kv), attended)


def draft_ms_per_token(p: Profile, context: int = 128) -> float:
    """One drafted token at batch 1."""
    return cost_ms(p, CallKind.DRAFT, 1, 1, context)


def prefill_ms_per_token(p: Profile, prompt: int = 512) -> float:
    """Prefill time per prompt token for a ``prompt``-token prompt at batch 1."""
    return cost_ms(p, CallKind.PREFILL, 1, prompt) / prompt


def crossover_tokens(p: Profile) -> float:
    """New tokens per step (weights only) past which a step is compute-bound."""
    bytes_per_s = p.bandwidth_gbs.value * 1e9
    flops_per_token = 2 * p.params_b.value * 1e9
    return p.weights_gb.value * 1e9 / bytes_per_s * (p.tflops.value * 1e12) / flops_per_token


def kv_capacity_tokens(p: Profile) -> int:
    """Cached tokens that fit in the device memory left after the weights."""
    free = (p.memory_gb.value - p.weights_gb.value) * 1e9
    return max(0, int(free / (p.kv_kb_per_token.value * 1e3)))


# --- the table ---------------------------------------------------------------------------------

_A100_BW = Cited(2039.0, A100_SHEET)
_H100_BW = Cited(3350.0, H100_SHEET)
# Per-step overhead, from NeMo's Llama-2-7B (6.74B params, 13.5 GB fp16) batch-1 latency for
# 128 prompt + 20 output tokens: 20 steps (1 prefill, 19 decodes), each weight-read bound, so
# overhead = (published - 20 x 13.5 GB / bandwidth) / 20.
_A100_OH = Cited(5.1, _d(f"{NEMO}: A100 234.0 ms; (234.0 - 20 x 6.61) / 20"))
_H100_OH = Cited(3.7, _d(f"{NEMO}: H100 153.8 ms; (153.8 - 20 x 4.03) / 20"))
# NIM's 2xH100 TP2 inter-token latency at concurrency 1 (500 in / 2000 out): 18.91 ms, against a
# roofline of 70.6 GB fp8 / 6.7 TB/s = 10.5 ms: TP2 all-reduces and serving add ~8.4 ms a step.
_H100X2_OH = Cited(8.4, _d(f"{NIM}: ITL 18.91 ms - 70.6 GB / 6.7 TB/s"))

_LLAMA3_8B = dict(  # Llama 3.1 8B: 32 layers, d 4096, 8 KV heads of 128
    params_b=Cited(8.03, "Meta Llama 3.1 model card: 8.03B parameters"),
    kv_kb_per_token=Cited(131.072, _d("2 (K,V) x 32 layers x 8 KV heads x 128 x 2 bytes")),
    layers=32,
    d_model=4096,
)
_LLAMA3_70B = dict(  # Llama 3.1/3.3 70B: 80 layers, d 8192, 8 KV heads of 128
    params_b=Cited(70.6, "Meta Llama 3.1 model card: 70.6B parameters"),
    kv_kb_per_token=Cited(327.68, _d("2 (K,V) x 80 layers x 8 KV heads x 128 x 2 bytes")),
    layers=80,
    d_model=8192,
)
_LLAMA2_7B = dict(  # the model NeMo and TensorRT-LLM published, for the checks
    params_b=Cited(6.74, "Meta Llama 2 paper: 7B model, 6.74B parameters"),
    weights_gb=Cited(13.48, _d("6.74B x 2 bytes (fp16)")),
    kv_kb_per_token=Cited(524.288, _d("2 (K,V) x 32 layers x 4096 x 2 bytes (no GQA)")),
    layers=32,
    d_model=4096,
)


def _gpu(
    name: str, device: str, model: str, chips: int, sheet: str, spec: dict, **figures: Cited
) -> Profile:
    is_h100 = sheet == H100_SHEET
    bw, tf = (_H100_BW, 989.0) if is_h100 else (_A100_BW, 312.0)
    usd = 2.49 if is_h100 else 1.49
    watts = 700.0 if is_h100 else 400.0
    times = f" x {chips} GPUs" if chips > 1 else ""
    how = f" ({_d('per-GPU figure' + times)})" if chips > 1 else ""
    base = dict(
        bandwidth_gbs=Cited(bw.value * chips, sheet + how),
        tflops=Cited(tf * chips, sheet + how),
        overhead_ms=_H100_OH if is_h100 else _A100_OH,
        memory_gb=Cited(80.0 * chips, sheet + how),
        power_w=Cited(watts * chips, sheet + how),
        usd_per_hour=Cited(usd * chips, PRICES + how),
    )
    base.update(spec)
    base.update(figures)
    return Profile(name=name, device=device, model=model, role="cloud", chips=chips, **base)


_CLOUD = (
    _gpu("a100/llama2-7b-fp16", "A100 80GB SXM", "Llama 2 7B fp16", 1, A100_SHEET, _LLAMA2_7B),
    _gpu("h100/llama2-7b-fp16", "H100 80GB SXM", "Llama 2 7B fp16", 1, H100_SHEET, _LLAMA2_7B),
    _gpu(
        "a100/llama3-8b-bf16",
        "A100 80GB SXM",
        "Llama 3.1 8B bf16",
        1,
        A100_SHEET,
        _LLAMA3_8B,
        weights_gb=Cited(16.06, _d("8.03B x 2 bytes")),
    ),
    _gpu(
        "h100/llama3-8b-bf16",
        "H100 80GB SXM",
        "Llama 3.1 8B bf16",
        1,
        H100_SHEET,
        _LLAMA3_8B,
        weights_gb=Cited(16.06, _d("8.03B x 2 bytes")),
    ),
    _gpu(
        "a100x4/llama3-70b-bf16",
        "4x A100 80GB SXM (TP4)",
        "Llama 3.1 70B bf16",
        4,
        A100_SHEET,
        _LLAMA3_70B,
        weights_gb=Cited(141.2, _d("70.6B x 2 bytes")),
        # The 1-GPU figure: TP4 adds all-reduces, so this is a floor (see CHECKS).
        overhead_ms=Cited(_A100_OH.value, _A100_OH.source + "; the 1-GPU figure, a floor at TP4"),
    ),
    _gpu(
        "h100x2/llama3-70b-bf16",
        "2x H100 80GB SXM (TP2)",
        "Llama 3.1 70B bf16",
        2,
        H100_SHEET,
        _LLAMA3_70B,
        weights_gb=Cited(141.2, _d("70.6B x 2 bytes")),
        overhead_ms=_H100X2_OH,
    ),
    _gpu(
        "h100x2/llama3-70b-fp8",
        "2x H100 80GB SXM (TP2)",
        "Llama 3.3 70B fp8",
        2,
        H100_SHEET,
        _LLAMA3_70B,
        weights_gb=Cited(70.6, _d("70.6B x 1 byte")),
        tflops=Cited(2 * 1979.0, H100_SHEET + " (fp8, x 2 GPUs)"),
        overhead_ms=_H100X2_OH,
    ),
)

# Edge devices: effective bandwidth and compute from published token rates (module docstring).
_PI5_TG, _PI5_PP = 9.0, 35.0  # TinyLlama-1.1B Q8_0 on a Pi 5, llama.cpp 2024-03-26 (MATMUL)
_TINYLLAMA_Q8_GB = 1.17  # 1.09 GiB GGUF (mozilla-ai/llamafile PR #453 table)
_PI5_BW = Cited(
    _TINYLLAMA_Q8_GB * _PI5_TG,
    _d(f"1.17 GB (TinyLlama Q8_0) x 9 tok/s generation, {MATMUL}"),
)
_PI5_TF = Cited(
    2 * 1.1e9 * _PI5_PP / 1e12, _d(f"2 x 1.1B x 35 tok/s prompt eval (llama.cpp), {MATMUL}")
)
_PI5 = dict(
    device="Raspberry Pi 5 8GB (4x Cortex-A76, CPU)",
    role="edge",
    chips=1,
    bandwidth_gbs=_PI5_BW,
    tflops=_PI5_TF,
    overhead_ms=Cited(0.0, _d("in the measured rates the effective figures come from")),
    memory_gb=Cited(8.0, "Raspberry Pi 5 product brief: 4 or 8 GB LPDDR4X-4267"),
    power_w=Cited(13.9, GEERLING),
    usd_per_hour=None,
)
_SMOLLM2 = dict(  # SmolLM2-135M: 30 layers, d 576, 3 KV heads of 64
    params_b=Cited(0.1345, "HuggingFaceTB/SmolLM2-135M config: 134.5M parameters"),
    kv_kb_per_token=Cited(23.04, _d("2 (K,V) x 30 layers x 3 KV heads x 64 x 2 bytes")),
    layers=30,
    d_model=576,
)
_TINYLLAMA = dict(  # TinyLlama-1.1B: 22 layers, d 2048, 4 KV heads of 64
    params_b=Cited(1.1, "TinyLlama-1.1B model card: 1.1B parameters"),
    kv_kb_per_token=Cited(22.528, _d("2 (K,V) x 22 layers x 4 KV heads x 64 x 2 bytes")),
    layers=22,
    d_model=2048,
)
# Jetson Orin Nano: small drafters are launch-bound, so the published rate becomes a per-step
# overhead on top of the weight read at the board's peak bandwidth.
_ORIN_TF = Cited(
    8.0, _d("measured fp16 GEMM on an Orin Nano, zzc0721/torch-performance-test-data #110")
)
_ORIN_SUPER_BW = 102.0  # GB/s, Orin Nano Super (JetPack 6.1 'Super' mode), NVIDIA announcement
_ORIN_BW = 68.0  # GB/s, Orin Nano 8GB (original clocks), NVIDIA Jetson Orin Nano datasheet

_EDGE = (
    Profile(
        name="rpi5/tinyllama-1.1b-q8",
        model="TinyLlama-1.1B Q8_0 (llama.cpp)",
        weights_gb=Cited(_TINYLLAMA_Q8_GB, "mozilla-ai/llamafile PR #453: Q8_0 GGUF 1.09 GiB"),
        **_TINYLLAMA,
        **_PI5,
    ),
    Profile(
        name="rpi5/smollm2-135m-q8",
        model="SmolLM2-135M Q8_0 (llama.cpp)",
        weights_gb=Cited(0.143, _d("134.5M x 34/32 bytes (Q8_0: 32 int8 + an fp16 scale)")),
        **_SMOLLM2,
        # The Pi 5's effective rates from TinyLlama, scaled by bytes and FLOPs: an upper bound
        # on speed, since per-layer thread syncs weigh more in a smaller model.
        **_PI5,
    ),
    Profile(
        name="orin-nano-super/smollm2-135m-q4",
        device="Jetson Orin Nano Super 8GB (GPU, 25 W mode)",
        model="SmolLM2-135M 4-bit GGUF (101 MB, llama.cpp CUDA)",
        role="edge",
        chips=1,
        weights_gb=Cited(0.101, SMOLHUB + ": 101 MB file"),
        **_SMOLLM2,
        bandwidth_gbs=Cited(_ORIN_SUPER_BW, "NVIDIA Jetson Orin Nano Super: 102 GB/s LPDDR5"),
        tflops=_ORIN_TF,
        overhead_ms=Cited(5.06, _d(f"{SMOLHUB}: 165.2 tok/s = 6.05 ms - 0.101 GB / 102 GB/s")),
        memory_gb=Cited(8.0, SMOLHUB + ": 8 GB LPDDR5 shared"),
        power_w=Cited(25.0, SMOLHUB + ": nvpmodel 25 W mode (budget; ~5.4 W rail measured)"),
        usd_per_hour=None,
    ),
    Profile(
        name="orin-nano/tinyllama-1.1b-q4",
        device="Jetson Orin Nano 8GB (GPU)",
        model="TinyLlama-1.1B q4f16 (MLC)",
        role="edge",
        chips=1,
        weights_gb=Cited(0.62, _d("1.1B x 4.5 bits (4-bit groups of 32 with fp16 scales)")),
        **_TINYLLAMA,
        bandwidth_gbs=Cited(_ORIN_BW, "NVIDIA Jetson Orin Nano 8GB datasheet: 68 GB/s"),
        tflops=_ORIN_TF,
        overhead_ms=Cited(5.6, _d(f"{JETSON_LAB}: ~68 tok/s = 14.7 ms - 0.62 GB / 68 GB/s")),
        memory_gb=Cited(8.0, "NVIDIA Jetson Orin Nano 8GB datasheet"),
        power_w=Cited(15.0, "NVIDIA Jetson Orin Nano 8GB datasheet: 7-15 W modes"),
        usd_per_hour=None,
    ),
    Profile(
        name="laptop-8840u/llama3.2-1b-q8",
        device="Laptop CPU, AMD Ryzen 7 8840U (8 cores, LPDDR5x)",
        model="Llama 3.2 1B Q8_0 (llama.cpp)",
        role="edge",
        chips=1,
        params_b=Cited(1.24, "Meta Llama 3.2 model card: 1.24B parameters"),
        weights_gb=Cited(1.32, _d("1.24B x 34/32 bytes (Q8_0)")),
        kv_kb_per_token=Cited(32.768, _d("2 (K,V) x 16 layers x 8 KV heads x 64 x 2 bytes")),
        layers=16,
        d_model=2048,
        # Effective rates of this CPU from the 8B figures (4.92 GB, 8.03B params), scaled to 1B.
        bandwidth_gbs=Cited(4.92 * 9.63, _d(f"4.92 GB x 9.63 tok/s tg128, {NORMIEBENCH}")),
        tflops=Cited(
            2 * 8.03e9 * 49.75 / 1e12, _d(f"2 x 8.03B x 49.75 tok/s pp512, {NORMIEBENCH}")
        ),
        overhead_ms=Cited(0.0, _d("in the measured rates the effective figures come from")),
        memory_gb=Cited(30.0, NORMIEBENCH + ": 30 GB RAM reported"),
        power_w=Cited(28.0, "AMD Ryzen 7 8840U specifications: 28 W default TDP"),
        usd_per_hour=None,
    ),
)

PROFILES: dict[str, Profile] = {p.name: p for p in (*_EDGE, *_CLOUD)}
"""Every profile by name."""

# MoE models on edge devices, for expert-offloading replays (``tandem bench moe``). Kept out of
# PROFILES, whose edge entries are drafters the planner and the simulator choose among.
_EDGE_MOE = (
    # Mixtral 8x7B at 4 bits on a Jetson AGX Orin 64GB, whose memory holds it whole; decode
    # reads the 2 routed experts of 8 and the dense part, which the roofline's full weight read
    # overstates (an upper bound).
    Profile(
        name="orin-agx/mixtral-8x7b-q4",
        device="Jetson AGX Orin 64GB (GPU)",
        model="Mixtral 8x7B 4-bit (4.5 bits a weight with group scales)",
        role="edge",
        chips=1,
        params_b=Cited(
            46.7, "Mistral AI, Mixtral of Experts (arXiv 2401.04088): 46.7B, 12.9B active"
        ),
        weights_gb=Cited(26.27, _d("46.7B x 4.5 bits")),
        kv_kb_per_token=Cited(131.072, _d("2 (K,V) x 32 layers x 8 KV heads x 128 x 2 bytes")),
        layers=32,
        d_model=4096,
        bandwidth_gbs=Cited(204.8, "NVIDIA Jetson AGX Orin series datasheet: 204.8 GB/s LPDDR5"),
        tflops=Cited(_ORIN_TF.value, _ORIN_TF.source + " (the Nano's; a floor for the AGX)"),
        overhead_ms=Cited(5.6, _d(f"the Orin Nano's per-step overhead ({JETSON_LAB})")),
        memory_gb=Cited(64.0, "NVIDIA Jetson AGX Orin series datasheet: 64 GB LPDDR5"),
        power_w=Cited(60.0, "NVIDIA Jetson AGX Orin series datasheet: 15-60 W modes"),
        usd_per_hour=None,
    ),
)
MOE_PROFILES: dict[str, Profile] = {p.name: p for p in _EDGE_MOE}
"""MoE-on-edge profiles by name."""


def get_profile(name: str) -> Profile:
    """The profile ``name`` names; ValueError listing the known names otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise ValueError(f"device: unknown profile {name!r}; known: {known}") from None


# --- checks against published latencies ---------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """A published latency and the calls it covers, to set the model beside it."""

    profile: str  # profile whose figures the model uses
    what: str  # what was measured, for people
    calls: tuple[tuple[CallKind, int, int, int], ...]  # (kind, batch, tokens/seq, context)
    published_ms: float  # the published figure
    source: str  # where it was published

    def model_ms(self) -> float:
        """What the profile predicts for the same calls."""
        p = get_profile(self.profile)
        return sum(cost_ms(p, k, b, t, c) for k, b, t, c in self.calls)


def _request(batch: int, prompt: int, out: int) -> tuple[tuple[CallKind, int, int, int], ...]:
    """A whole request: one prefill (which yields the first token), then out-1 decodes."""
    decodes = ((CallKind.DECODE, batch, 1, prompt + i) for i in range(out - 1))
    return ((CallKind.PREFILL, batch, prompt, 0), *decodes)


# The overheads are fitted on NeMo batch 1 (so that one lands at 1.00); the rest are independent.
# Results (see describe()): NeMo batch-8 requests 0.84 (A100 and H100); TensorRT-LLM A100 prefills
# 0.73 (7B, 128 and 2048 tokens) and 0.64 (70B TP4, 2048); NIM 2xH100 fp8 5000-token prefill 0.48.
# The model is never slower than published: engines reach neither peak bandwidth nor peak FLOPS,
# so emulated clouds are optimistic, most on long prefills and large verify batches.
CHECKS: tuple[Check, ...] = (
    Check("a100/llama2-7b-fp16", "request, batch 1", _request(1, 128, 20), 234.0, NEMO),
    Check("a100/llama2-7b-fp16", "request, batch 8", _request(8, 128, 20), 329.5, NEMO),
    Check("h100/llama2-7b-fp16", "request, batch 8", _request(8, 128, 20), 199.2, NEMO),
    Check("a100/llama2-7b-fp16", "prefill 128", ((CallKind.PREFILL, 1, 128, 0),), 16.0, TRTLLM),
    Check("a100/llama2-7b-fp16", "prefill 2048", ((CallKind.PREFILL, 1, 2048, 0),), 133.0, TRTLLM),
    Check(
        "a100x4/llama3-70b-bf16", "prefill 2048", ((CallKind.PREFILL, 1, 2048, 0),), 377.0, TRTLLM
    ),
    Check("h100x2/llama3-70b-fp8", "prefill 5000", ((CallKind.PREFILL, 1, 5000, 0),), 406.77, NIM),
)


def describe(names: Sequence[str] | None = None) -> str:
    """A table of profiles with their key costs, then the checks against published figures."""
    rows = [
        "profile                          draft/decode ms  prefill ms/tok  verify 32x5 ms  "
        "mem GB  W      $/h"
    ]
    for p in (get_profile(n) for n in (names or PROFILES)):
        verify = cost_ms(p, CallKind.VERIFY, 32, 5, 512)
        usd = f"{p.usd_per_hour.value:.2f}" if p.usd_per_hour else "-"
        rows.append(
            f"{p.name:<32} {draft_ms_per_token(p):>15.2f} {prefill_ms_per_token(p):>15.3f} "
            f"{verify:>15.1f} {p.memory_gb.value:>7.0f} {p.power_w.value:<6.1f} {usd}"
        )
    rows.append("")
    rows.append("checks: model vs published")
    for c in CHECKS:
        m = c.model_ms()
        rows.append(
            f"  {c.profile:<24} {c.what:<18} model {m:8.1f} ms  published {c.published_ms:8.1f}"
            f" ms  ratio {m / c.published_ms:.2f}"
        )
    return "\n".join(rows)


def sources(p: Profile) -> list[str]:
    """``field: value (source)`` for every figure of a profile."""
    return [f"{k}: {v.value:g} ({v.source})" for k, v in p.figures().items()]
