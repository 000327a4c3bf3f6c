"""Offloaded decoding of the trained MoE through a real expert server over gRPC on 127.0.0.1:
lossless tiers give the all-resident logits exactly; int8 is lossy and says so; the
cross-layer predictor recalls the trained model's experts."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest
import torch

from cloud_node.experts import serve_experts
from edge_node.experts import build_edge_moe
from models import task
from models.moe.layouts import ExpertKey
from models.moe.model import MOE_CHECKPOINT, load_moe, moe_dir
from models.moe.offload import OffloadConfig
from models.moe.store import DiskStore
from models.torch_backend import TorchLM

CHECKPOINT = MOE_CHECKPOINT


class ServerThread:
    """An expert server on its own event loop, for the blocking edge client."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        fut = asyncio.run_coroutine_threadsafe(serve_experts(CHECKPOINT), self.loop)
        self.server, self.address, self.bank = fut.result(timeout=20)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(0), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    s = ServerThread()
    yield s
    s.stop()


def _feeds(n: int = 4) -> list[list[int]]:
    """Prompts and their greedy continuations from the all-resident model (teacher forcing)."""
    tok, lm = task.WordTokenizer(), TorchLM(load_moe(CHECKPOINT))
    feeds = []
    for p in task.generate(n, task.HELDOUT_SEED)[:n]:
        ids = [tok.bos_id, *tok.encode(p.question)]
        s = lm.session()
        nxt = int(s.extend(ids)[-1].argmax())
        out = [*ids]
        for _ in range(12):
            out.append(nxt)
            nxt = int(s.extend([nxt])[-1].argmax())
        feeds.append(out)
    return feeds


def _logits(lm: TorchLM, feeds: list[list[int]], prompt_lens: list[int]) -> list[np.ndarray]:
    """Prefill each prompt, then decode the rest one token at a time; every row of logits."""
    out = []
    for ids, n in zip(feeds, prompt_lens, strict=True):
        s = lm.session()
        rows = [s.extend(ids[:n])]
        rows += [s.extend([t]) for t in ids[n:]]
        out.append(np.concatenate(rows))
    return out


@pytest.fixture(scope="module")
def reference() -> tuple[list[list[int]], list[int], list[np.ndarray]]:
    torch.set_num_threads(1)
    feeds = _feeds()
    lens = [f.index(task.WordTokenizer().encode("?")[0]) + 1 for f in feeds]
    return feeds, lens, _logits(TorchLM(load_moe(CHECKPOINT)), feeds, lens)


def _budget(share: float) -> int:
    store = DiskStore(moe_dir(CHECKPOINT))
    return int(store.expert_bytes(ExpertKey(0, 0)) * len(store.experts()) * share)


CONFIGS = {
    "remote+prefetch": OffloadConfig(0, policy="lru"),
    "fetch-only": OffloadConfig(0, policy="lfu", prefetch=False, remote=False),
    "remote-always": OffloadConfig(0, policy="shallow", prefetch=False),
}


@pytest.mark.parametrize("name", list(CONFIGS))
@torch.inference_mode()
def test_cloud_tiers_are_lossless(server: ServerThread, reference: tuple, name: str) -> None:
    feeds, lens, want = reference
    cfg = replace(CONFIGS[name], budget_bytes=_budget(0.5))
    edge = build_edge_moe(CHECKPOINT, cfg, server.address)
    try:
        got = _logits(edge.lm, feeds, lens)
        stats = edge.executor.stats
    finally:
        edge.close()
    diff = max(float(np.abs(g - w).max()) for g, w in zip(got, want, strict=True))
    assert diff == 0.0
    assert stats.requests > 0 and 0 < stats.hits < stats.requests
    assert edge.executor.cache.used_bytes <= edge.executor.cache.budget_bytes
    tiers = edge.tiers()
    if name == "fetch-only":
        assert stats.actions.get("remote", 0) == 0 and tiers["cloud"]["fetches"] > 0
    else:
        assert stats.actions.get("remote", 0) > 0 and tiers["remote"]["calls"] > 0


@torch.inference_mode()
def test_disk_tier_is_lossless(reference: tuple) -> None:
    feeds, lens, want = reference
    edge = build_edge_moe(CHECKPOINT, OffloadConfig(_budget(0.25), remote=False))
    try:
        got = _logits(edge.lm, feeds, lens)
    finally:
        edge.close()
    assert all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))
    assert edge.tiers()["disk"]["reads"] > 0


@torch.inference_mode()
def test_int8_experts_are_lossy_and_close(server: ServerThread, reference: tuple) -> None:
    feeds, lens, want = reference
    cfg = OffloadConfig(_budget(0.5), remote=False)
    edge = build_edge_moe(CHECKPOINT, cfg, server.address, int8=True)
    try:
        got = _logits(edge.lm, feeds, lens)
    finally:
        edge.close()
    diffs = [float(np.abs(g - w).max()) for g, w in zip(got, want, strict=True)]
    assert max(diffs) > 0.0  # lossy, as flagged
    agree = np.mean([np.mean(g.argmax(-1) == w.argmax(-1)) for g, w in zip(got, want, strict=True)])
    assert agree >= 0.9
    assert edge.cloud is not None and edge.cloud.counters.fetched_bytes > 0


@torch.inference_mode()
def test_predictor_recalls_the_trained_models_experts(reference: tuple) -> None:
    feeds, lens, _ = reference
    edge = build_edge_moe(CHECKPOINT, OffloadConfig(_budget(1.0), remote=False, prefetch=False))
    try:
        _logits(edge.lm, feeds, lens)
    finally:
        edge.close()
    stats = edge.executor.stats
    assert set(stats.recall.per_layer()) == {1, 2, 3}  # nothing comes before layer 0
    # from the next block's input (layer l's output) the guess is sharper than from layer l's
    # MoE input, which leaves more time to prefetch
    assert stats.recall.overall() >= 0.9
    assert stats.recall_early.overall() >= 0.7
    assert stats.recall.overall() > stats.recall_early.overall()
