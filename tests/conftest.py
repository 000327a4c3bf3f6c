"""Shared fixtures: small random models that stand in for the trained ones where training data
does not matter (losslessness holds for any pair of models with one vocabulary)."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

from models.task import WordTokenizer
from models.torch_backend import TorchLM, load_torch
from models.transformer import ModelConfig, TinyLM

torch.set_num_threads(1)

# The run's own security state (CA, certificates, token), shared with the processes tests start.
os.environ["TANDEM_HOME"] = tempfile.mkdtemp(prefix="tandem-test-home-")


def random_lm(seed: int, d_model: int = 32, n_layers: int = 2, name: str = "random") -> TorchLM:
    """A random TinyLM over the task vocabulary; sharpened logits so argmax is stable."""
    torch.manual_seed(seed)
    cfg = ModelConfig(WordTokenizer().vocab_size, d_model, n_layers, 2, 2 * d_model, 64)
    module = TinyLM(cfg)
    with torch.no_grad():
        module.tok.weight.mul_(8.0)
    return TorchLM(module, name=name)


@pytest.fixture(scope="session")
def tok() -> WordTokenizer:
    return WordTokenizer()


@pytest.fixture(scope="session")
def target_lm() -> TorchLM:
    return random_lm(1, d_model=48, name="target")


@pytest.fixture(scope="session")
def drafter_lm() -> TorchLM:
    return random_lm(2, d_model=32, name="drafter")


@pytest.fixture(scope="session")
def target() -> TorchLM:
    """The trained bundled target (modules may define their own ``target`` instead)."""
    return load_torch("target")


@pytest.fixture(scope="session")
def drafter() -> TorchLM:
    """The trained bundled drafter, in torch."""
    return load_torch("drafter")
