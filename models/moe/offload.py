"""The offloading executor: resident cache, background prefetch, and a cost model per miss.

It runs one MoE layer's hit experts (``ExpertExecutor``) with the weights it holds, and for the
rest asks the cost model (``models.moe.costs``) whether to fetch the weights from the expert
store, ship the rows to a remote expert server, or wait for a prefetch already in flight.
Before a layer runs, the cross-layer predictor names the next layer's experts and their fetches
start on background threads, overlapping this layer's compute and stalls.

Outputs are assembled by expert index and combined in ascending order by the caller, so
fetching, prefetching and remote compute change where an expert runs, never the floats: with
fp32 weights the logits equal an all-resident run bit for bit. int8 weights are lossy.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from models.moe.cache import ExpertCache, make_policy
from models.moe.costs import LinkModel, MissAction, miss_costs
from models.moe.layouts import ExpertKey
from models.moe.predictor import CrossLayerPredictor, RecallMeter
from models.moe.routing import ExpertRows, expert_mlp, fuse
from models.moe.store import ExpertStore, ExpertTensors

Weights = tuple[torch.Tensor, torch.Tensor]  # fused gate-up [2I, D], down [D, I]


class RemoteExperts(Protocol):
    """An expert server that runs experts on rows it is sent (remote compute)."""

    def compute(self, layer: int, rows: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
        """Expert index -> output rows [n, D] for each expert's input rows [n, D]."""
        ...


@dataclass(frozen=True)
class OffloadConfig:
    """How the edge runs a MoE whose experts do not all fit."""

    budget_bytes: int  # resident expert bytes at the most
    policy: str = "lru"  # eviction policy (models.moe.cache.POLICIES)
    prefetch: bool = True  # prefetch the predicted experts of the next layer
    prefetch_k: int = 2  # experts predicted per row
    remote: bool = True  # allow remote compute on a miss (needs a RemoteExperts)
    cost_model: bool = True  # choose per miss; False: always fetch (or wait for a prefetch)
    link: LinkModel = LinkModel(12.5e6, 0.02)  # what the cost model assumes of the link
    workers: int = 4  # threads of each pool (misses and remote calls; background fetches)
    fill_on_remote: bool = True  # after a remote compute, fetch the expert in the background
    max_queued_experts: int = 2  # background fetches start only below this many experts queued


@dataclass
class OffloadStats:
    """What the tiers did (one definition of each figure; see DESIGN.md, Metrics)."""

    requests: int = 0  # expert requests (a layer asking for one expert for its rows)
    hits: int = 0  # requests served from resident weights
    late_hits: int = 0  # requests whose expert was being prefetched (counted apart)
    actions: dict[str, int] = field(default_factory=dict)  # per MissAction, misses and late hits
    stall_s: float = 0.0  # time a layer waited for fetches, prefetches or remote compute
    fetched_bytes: int = 0  # expert bytes fetched on a miss
    prefetched_bytes: int = 0  # expert bytes fetched ahead of need
    remote_bytes: int = 0  # activation bytes sent and received for remote compute
    trace: list[tuple[ExpertKey, ...]] = field(default_factory=list)  # experts per layer step
    rows: list[tuple[int, ...]] = field(default_factory=list)  # per step, rows per expert
    predicted: list[tuple[int, ...]] = field(default_factory=list)  # per step, next layer's guess
    refined: list[tuple[int, ...]] = field(default_factory=list)  # per step, the sharper guess
    recall: RecallMeter = field(default_factory=RecallMeter.new)  # the refined prediction
    recall_early: RecallMeter = field(default_factory=RecallMeter.new)  # from layer l's MoE input

    @property
    def hit_rate(self) -> float:
        return self.hits / self.requests if self.requests else 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "hit_rate": self.hit_rate,
            "late_hit_rate": self.late_hits / self.requests if self.requests else 0.0,
            "actions": dict(self.actions),
            "stall_s": self.stall_s,
            "bytes": {
                "fetched": self.fetched_bytes,
                "prefetched": self.prefetched_bytes,
                "remote": self.remote_bytes,
            },
            "recall_per_layer": self.recall.per_layer(),
            "recall": self.recall.overall(),
            "recall_early": self.recall_early.overall(),
        }


def to_weights(t: ExpertTensors) -> Weights:
    """Torch weights of fetched tensors (int8 parts arrive dequantized by the store)."""
    gate, up, down = (
        torch.from_numpy(np.array(a, np.float32, copy=True)) for a in (t.gate, t.up, t.down)
    )
    return fuse(gate, up), down


@dataclass
class _InFlight:
    future: Future[ExpertTensors]
    started: float
    expected_s: float


class OffloadExecutor:
    """Runs a MoE's experts from a byte-budgeted cache, a store and a remote expert server."""

    def __init__(
        self,
        config: OffloadConfig,
        store: ExpertStore,
        n_layers: int,
        d_model: int,
        remote: RemoteExperts | None = None,
        predictor: CrossLayerPredictor | None = None,
    ) -> None:
        self.config, self.store, self.remote, self.predictor = config, store, remote, predictor
        self.n_layers, self.d_model = n_layers, d_model
        self.cache: ExpertCache[Weights] = ExpertCache(
            config.budget_bytes, make_policy(config.policy, n_layers)
        )
        self.stats = OffloadStats()
        # misses and remote calls never queue behind background fetches: two pools
        self._pool = ThreadPoolExecutor(config.workers, thread_name_prefix="tandem-expert")
        self._bg = ThreadPoolExecutor(config.workers, thread_name_prefix="tandem-prefetch")
        self._inflight: dict[ExpertKey, _InFlight] = {}
        self._predicted: dict[int, np.ndarray] = {}  # layer -> [N, k] early guess per row
        self._refined: dict[int, np.ndarray] = {}  # layer -> [N, k] guess from its block input
        self._compute_s = 1e-4  # running estimate of one local expert call

    def close(self) -> None:
        """Stop the background fetch threads (waits for running fetches)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._bg.shutdown(wait=True, cancel_futures=True)

    def warm(self, keys: list[ExpertKey]) -> None:
        """Load ``keys`` into the cache up front (as far as the budget goes), uncounted."""
        for k in keys:
            t = self.store.fetch(k)
            self.cache.put(k, to_weights(t), t.nbytes)

    # --- the executor -------------------------------------------------------------------------

    def run(
        self, layer: int, hidden: torch.Tensor, plan: list[ExpertRows], resid: torch.Tensor
    ) -> dict[int, torch.Tensor]:
        keys = tuple(ExpertKey(layer, r.expert) for r in plan)
        self.stats.trace.append(keys)
        self.stats.rows.append(tuple(len(r.token_idx) for r in plan))
        self.stats.predicted.append(())
        self.stats.refined.append(())
        if layer in self._predicted:
            actual: list[set[int]] = [set() for _ in range(hidden.shape[0])]
            for r in plan:
                for t in r.token_idx.tolist():
                    actual[t].add(r.expert)
            self.stats.recall_early.add_rows(layer, self._predicted.pop(layer), actual)
            if layer in self._refined:
                self.stats.recall.add_rows(layer, self._refined.pop(layer), actual)
        self._drain()
        if self.predictor is not None and layer + 1 < self.n_layers:
            self._prefetch_next(layer + 1, resid)
        out: dict[int, torch.Tensor] = {}
        local: list[tuple[ExpertRows, Weights]] = []
        waits: list[tuple[ExpertRows, Future[ExpertTensors]]] = []
        remote_rows: dict[int, ExpertRows] = {}
        for rows, key in zip(plan, keys, strict=True):
            self.stats.requests += 1
            w = self.cache.get(key)
            if w is not None:
                self.stats.hits += 1
                local.append((rows, w))
                continue
            action = self._choose(key, len(rows.token_idx))
            self.stats.actions[action.value] = self.stats.actions.get(action.value, 0) + 1
            if key in self._inflight:
                self.stats.late_hits += 1
            if action is MissAction.REMOTE:
                remote_rows[rows.expert] = rows
            elif action is MissAction.WAIT:
                waits.append((rows, self._inflight[key].future))
            else:
                self.stats.fetched_bytes += self.store.expert_bytes(key)
                waits.append((rows, self._pool.submit(self.store.fetch, key)))
        remote_job = self._ship(layer, hidden, remote_rows) if remote_rows else None
        if remote_job is not None and self.config.fill_on_remote:
            for e in remote_rows:  # this token is served remotely; later ones may hit
                self._start_fetch(ExpertKey(layer, e))
        for rows, w in local:
            out[rows.expert] = self._local(hidden, rows, w)
        start = time.perf_counter()
        if remote_job is not None:
            for e, y in remote_job.result().items():
                out[e] = torch.from_numpy(y)
        for rows, fut in waits:
            t = fut.result()
            key = ExpertKey(layer, rows.expert)
            self._inflight.pop(key, None)
            w = to_weights(t)
            self.cache.put(key, w, t.nbytes, pinned=keys)
            out[rows.expert] = self._local(hidden, rows, w, timed=False)
        self.stats.stall_s += time.perf_counter() - start
        return out

    # --- pieces -------------------------------------------------------------------------------

    def _local(
        self, hidden: torch.Tensor, rows: ExpertRows, w: Weights, timed: bool = True
    ) -> torch.Tensor:
        t0 = time.perf_counter()
        y = expert_mlp(hidden[rows.token_idx], *w)
        if timed:
            self._compute_s = 0.9 * self._compute_s + 0.1 * (time.perf_counter() - t0)
        return y

    def _choose(self, key: ExpertKey, tokens: int) -> MissAction:
        cfg = self.config
        inflight = self._inflight.get(key)
        remaining = None
        if inflight is not None:
            remaining = inflight.expected_s - (time.perf_counter() - inflight.started)
        can_remote = cfg.remote and self.remote is not None
        if not cfg.cost_model:
            return MissAction.WAIT if inflight is not None else MissAction.FETCH
        costs = miss_costs(
            cfg.link,
            self.store.expert_bytes(key),
            tokens,
            self.d_model,
            self._compute_s,
            self._compute_s,
            queued_bytes=self._queued_bytes(),
            inflight_remaining_s=remaining,
        )
        return costs.best(allow_remote=can_remote)

    def _queued_bytes(self) -> int:
        now, link = time.perf_counter(), self.config.link
        left = 0.0
        for f in self._inflight.values():
            if not f.future.done():
                left += max(0.0, f.expected_s - (now - f.started)) * link.bandwidth_bytes_s
        return int(left)

    def _ship(
        self, layer: int, hidden: torch.Tensor, rows: dict[int, ExpertRows]
    ) -> Future[dict[int, np.ndarray]]:
        assert self.remote is not None
        arrays = {e: hidden[r.token_idx].numpy().copy() for e, r in rows.items()}
        self.stats.remote_bytes += 2 * sum(a.nbytes for a in arrays.values())
        return self._pool.submit(self.remote.compute, layer, arrays)

    def _prefetch_next(self, layer: int, resid: torch.Tensor) -> None:
        assert self.predictor is not None
        rows = self.predictor.predict_rows(layer, resid.numpy(), self.config.prefetch_k)
        self._predicted[layer] = rows
        experts = _ranked(rows, self.predictor.routers[layer].shape[0])
        self.stats.predicted[-1] = tuple(experts)
        if not self.config.prefetch or self.cache.budget_bytes == 0:
            return
        for e in experts:
            self._start_fetch(ExpertKey(layer, e))

    def after(self, layer: int, resid: torch.Tensor) -> None:
        """Layer ``layer`` is done: its output, the next block's input, sharpens the guess for
        the next layer (less lead time than the early guess, better recall)."""
        if self.predictor is None or layer + 1 >= self.n_layers:
            return
        nxt = layer + 1
        rows = self.predictor.predict_rows(nxt, resid.numpy(), self.config.prefetch_k)
        self._refined[nxt] = rows
        extra = _ranked(rows, self.predictor.routers[nxt].shape[0])
        self.stats.refined[-1] = tuple(extra)
        if self.config.prefetch:
            for e in extra:
                self._start_fetch(ExpertKey(nxt, e))

    def _start_fetch(self, key: ExpertKey) -> None:
        """Fetch ``key`` in the background unless it is resident or already coming."""
        if key in self.cache or key in self._inflight or self.cache.budget_bytes == 0:
            return
        nbytes = self.store.expert_bytes(key)
        if self._queued_bytes() >= self.config.max_queued_experts * nbytes:
            return  # the link already holds enough background work: the queue stays bounded
        link = self.config.link
        expected = link.rtt_s + link.transfer_s(nbytes + self._queued_bytes())
        self.stats.prefetched_bytes += nbytes
        fut = self._bg.submit(self.store.fetch, key)
        self._inflight[key] = _InFlight(fut, time.perf_counter(), expected)

    def _drain(self) -> None:
        """Move finished prefetches into the cache."""
        for key, f in list(self._inflight.items()):
            if f.future.done():
                del self._inflight[key]
                t = f.future.result()
                self.cache.put(key, to_weights(t), t.nbytes)


def _ranked(rows: np.ndarray, n_experts: int) -> list[int]:
    """Experts any row is predicted to want, most wanted first."""
    votes = np.bincount(rows.ravel(), minlength=n_experts)
    return [int(e) for e in np.argsort(-votes, kind="stable") if votes[e] > 0]
