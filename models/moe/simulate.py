"""Replaying a recorded expert trace at other sizes: a real MoE on a device, over a link.

The live benchmark runs the bundled model's experts over an emulated link; this replays the
trace it recorded (experts, rows and predictions per layer step) with each expert's bytes and
compute scaled to a real MoE on a device profile. It uses the live code's cache, policies and
cost model; only time is modelled: a link of fixed RTT whose two directions each send one
expert transfer at a time at the link's bandwidth (remote compute's small messages interleave,
as HTTP/2 frames do), and compute at the profile's speed. Everything it reports is emulated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from models.moe.cache import ExpertCache, make_policy
from models.moe.costs import LinkModel, MissAction, miss_costs
from models.moe.layouts import ExpertKey

_REQUEST_BYTES = 64  # a fetch request on the wire


@dataclass(frozen=True)
class SimSizes:
    """What one expert and one layer cost at the scale being emulated."""

    expert_bytes: int  # wire bytes of one expert
    d_model: int  # width of a row of activations
    activation_bytes: int  # bytes per activation value on the wire (4 fp32, 2 bf16)
    device_expert_s: float  # one expert call on the edge (weight read bound)
    device_row_s: float  # plus this per row it computes
    server_expert_s: float  # one expert call on the cloud, per call
    dense_token_s: float  # the non-expert part of one layer, per token, on the edge
    link: LinkModel  # the edge's link to the expert store


@dataclass(frozen=True)
class SimConfig:
    """One configuration of the edge (as OffloadConfig, for the replay)."""

    budget_bytes: int
    policy: str = "lru"
    prefetch: bool = True
    remote: bool = True
    cost_model: bool = True
    fill_on_remote: bool = True
    max_queued_experts: int = 2  # background fetches start only below this many experts queued


@dataclass
class SimResult:
    """What the replay measured (emulated)."""

    requests: int = 0
    hits: int = 0
    late_hits: int = 0
    actions: dict[str, int] = field(default_factory=dict)
    stall_s: float = 0.0
    decode_tokens: int = 0
    decode_s: float = 0.0
    total_s: float = 0.0
    fetched_bytes: int = 0
    remote_bytes: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.requests if self.requests else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        return self.decode_tokens / self.decode_s if self.decode_s else 0.0


class _Link:
    """Serialisation of each direction, and the half-RTT every message pays."""

    def __init__(self, link: LinkModel) -> None:
        self.link, self.half = link, link.rtt_s / 2
        self.up_free = self.down_free = 0.0

    def up(self, t: float, nbytes: int) -> float:
        start = max(t, self.up_free)
        self.up_free = start + self.link.transfer_s(nbytes)
        return self.up_free + self.half

    def down(self, t: float, nbytes: int) -> float:
        start = max(t, self.down_free)
        self.down_free = start + self.link.transfer_s(nbytes)
        return self.down_free + self.half

    def queued_bytes(self, t: float) -> int:
        return int(max(0.0, self.down_free - t) * self.link.bandwidth_bytes_s)


def simulate(
    trace: Sequence[tuple[ExpertKey, ...]],
    rows: Sequence[tuple[int, ...]],
    predicted: Sequence[tuple[int, ...]],
    refined: Sequence[tuple[int, ...]],
    n_layers: int,
    top_k: int,
    sizes: SimSizes,
    cfg: SimConfig,
) -> SimResult:
    """Replay the trace under ``cfg`` at ``sizes``; times are modelled, not measured.

    ``predicted`` are the guesses made from each step's MoE input (prefetched as the step
    starts), ``refined`` those made from its output (prefetched as it ends)."""
    cache: ExpertCache[bool] = ExpertCache(cfg.budget_bytes, make_policy(cfg.policy, n_layers))
    link, res, nb = _Link(sizes.link), SimResult(), sizes.expert_bytes
    inflight: dict[ExpertKey, float] = {}
    t = 0.0

    def fetch(now: float) -> float:
        res.fetched_bytes += nb
        return link.down(link.up(now, _REQUEST_BYTES), nb)

    def background(key: ExpertKey, now: float) -> None:
        busy = link.queued_bytes(now) >= cfg.max_queued_experts * nb
        if cfg.budget_bytes and key not in cache and key not in inflight and not busy:
            inflight[key] = fetch(now)

    for keys, counts, guess, sharper in zip(trace, rows, predicted, refined, strict=True):
        start, tokens = t, max(1, sum(counts) // top_k)
        t += sizes.dense_token_s * tokens  # attention and norms before the MoE
        for k, arrival in list(inflight.items()):
            if arrival <= t:
                del inflight[k]
                cache.put(k, True, nb)
        if cfg.prefetch and keys[0].layer + 1 < n_layers:
            for e in guess:
                background(ExpertKey(keys[0].layer + 1, e), t)
        local, ready, arrived = t, [], []
        for key, n in zip(keys, counts, strict=True):
            res.requests += 1
            compute = sizes.device_expert_s + n * sizes.device_row_s
            if cache.get(key) is not None:
                res.hits += 1
                local += compute
                continue
            res.late_hits += key in inflight
            action = _choose(cfg, sizes, link, key, n, inflight, t, compute)
            res.actions[action.value] = res.actions.get(action.value, 0) + 1
            if action is MissAction.REMOTE:
                shipped = n * sizes.d_model * sizes.activation_bytes
                res.remote_bytes += 2 * shipped
                done = link.up(t, shipped) + sizes.server_expert_s
                ready.append(done + sizes.link.transfer_s(shipped) + link.half)
                if cfg.fill_on_remote:
                    background(key, t)
            else:
                came = inflight.pop(key) if action is MissAction.WAIT else fetch(t)
                ready.append(came + compute)
                arrived.append(key)
        end = max([local, *ready])
        res.stall_s += max(0.0, end - local)
        for key in arrived:
            cache.put(key, True, nb, pinned=keys)
        t = end
        if cfg.prefetch and keys[0].layer + 1 < n_layers:  # from the next block's input
            for e in sharper:
                background(ExpertKey(keys[0].layer + 1, e), t)
        if tokens == 1 and sum(counts) == top_k:
            res.decode_s += t - start
            res.decode_tokens += keys[0].layer == 0
    res.total_s = t
    return res


def _choose(
    cfg: SimConfig,
    sizes: SimSizes,
    link: _Link,
    key: ExpertKey,
    rows: int,
    inflight: dict[ExpertKey, float],
    t: float,
    compute: float,
) -> MissAction:
    if not cfg.cost_model:
        return MissAction.WAIT if key in inflight else MissAction.FETCH
    remaining = inflight[key] - t if key in inflight else None
    costs = miss_costs(
        sizes.link,
        sizes.expert_bytes,
        rows,
        sizes.d_model,
        compute,
        sizes.server_expert_s,
        queued_bytes=link.queued_bytes(t),
        inflight_remaining_s=remaining,
        activation_bytes=sizes.activation_bytes,
    )
    return costs.best(allow_remote=cfg.remote)
