"""Real MoE layouts served with offloading give transformers' own logits.

Tiny random Mixtral, OLMoE and Qwen2-MoE models are built locally from configs (no hub), saved
with transformers, then served with their experts offloaded to a byte-budgeted cache over the
per-expert safetensors keys. This is a layout and equivalence test, so random weights are the
point; numeric quality is tested on the trained bundled model elsewhere.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.moe.hf import load_hf_moe, moe_shape, offload_experts
from models.moe.layouts import ExpertKey, Layout, detect_layout, expert_tensor
from models.moe.offload import OffloadConfig, OffloadExecutor
from models.moe.store import DiskStore

transformers = pytest.importorskip("transformers")

COMMON = dict(
    vocab_size=96,
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    num_experts_per_tok=2,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)


def _build(kind: str, directory: Path) -> None:
    torch.manual_seed(7)
    if kind == "mixtral":
        cfg = transformers.MixtralConfig(num_local_experts=6, intermediate_size=24, **COMMON)
        model = transformers.MixtralForCausalLM(cfg)
    elif kind == "olmoe":
        cfg = transformers.OlmoeConfig(
            num_experts=6, intermediate_size=24, norm_topk_prob=True, **COMMON
        )
        model = transformers.OlmoeForCausalLM(cfg)
    else:
        cfg = transformers.Qwen2MoeConfig(
            num_experts=6,
            intermediate_size=40,
            moe_intermediate_size=24,
            shared_expert_intermediate_size=40,
            **COMMON,
        )
        model = transformers.Qwen2MoeForCausalLM(cfg)
    model.eval().save_pretrained(directory)


@pytest.fixture(scope="module", params=["mixtral", "olmoe", "qwen2_moe"])
def checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp(request.param)
    _build(request.param, directory)
    return directory


def _ids() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.randint(3, 96, (2, 11), generator=g)


@torch.inference_mode()
@pytest.mark.parametrize("share", [0.5, 1.0])
def test_offloaded_logits_equal_transformers(checkpoint: Path, share: float) -> None:
    reference, layout = load_hf_moe(checkpoint)
    want = reference(_ids()).logits
    model, _ = load_hf_moe(checkpoint)
    store = DiskStore(checkpoint)
    layers, experts, width = moe_shape(checkpoint)
    budget = int(store.expert_bytes(ExpertKey(0, 0)) * layers * experts * share)
    executor = OffloadExecutor(OffloadConfig(budget, remote=False), store, layers, width)
    offload_experts(model, layout, executor)
    try:
        got = model(_ids()).logits
        again = model(_ids()).logits  # the second pass starts from what the first left resident
    finally:
        executor.close()
    assert torch.equal(got, want), float((got - want).abs().max())
    assert torch.equal(again, want)
    assert store.reads > 0
    assert executor.cache.used_bytes <= budget
    if share == 1.0:  # everything fits: the second pass reads nothing
        assert executor.stats.hits == executor.stats.requests // 2


def test_layout_is_read_from_the_keys_real_checkpoints_use(checkpoint: Path) -> None:
    layout = detect_layout(checkpoint)
    store = DiskStore(checkpoint)
    key = expert_tensor(layout, ExpertKey(1, 5), "down")
    assert key in store.checkpoint.keys()
    if layout is Layout.MIXTRAL:
        assert key == "model.layers.1.block_sparse_moe.experts.5.w2.weight"
    else:
        assert key == "model.layers.1.mlp.experts.5.down_proj.weight"
    assert len(store.experts()) == 3 * 6
    t = store.fetch(ExpertKey(2, 3))
    assert t.gate.shape == (24, 32) and t.down.shape == (32, 24)
