"""The scheduler: a pure cost model over measured figures, and the plan it picks.

For each mode a request can run in, predict its latency and its cloud compute from what the nodes
measured (RTT, draft ms per token, verify ms as a function of k, target ms per token, load,
acceptance); score each by the request's objective; keep the modes its quality floor admits.
Simulations import these functions; the coordinator calls them on its live snapshot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

EDGE_ONLY, CLOUD_ONLY, SPECULATION = "edge-only", "cloud-only", "speculation"
OBJECTIVES = ("latency", "cloud_cost", "mix")
QUALITY_FLOORS = ("target", "any")
DEFAULT_K_CHOICES = (1, 2, 3, 4, 6, 8)


@dataclass(frozen=True)
class CloudView:
    """What the coordinator knows of one cloud node."""

    node_id: str
    target_ms_per_token: float = 2.0  # autoregressive target time per token, unloaded
    verify_base_ms: float = 2.0  # verify pass, fixed part
    verify_per_token_ms: float = 0.2  # verify pass, per drafted token
    busy_fraction: float = 0.0  # share of time its model thread is busy (0..1)
    queue_depth: int = 0  # verify rounds waiting
    model: str = ""  # target model name

    def wait_ms(self) -> float:
        """Expected wait of one model call behind other work (M/M/1: rho / (1 - rho) passes).

        The model thread is not preemptive: a verify round or a whole generation waits for the
        pass in progress and the queue ahead of it, so every call pays this once.
        """
        rho = min(max(self.busy_fraction, 0.0), 0.9)
        pass_ms = self.verify_base_ms + 4 * self.verify_per_token_ms
        return (rho / (1.0 - rho) + self.queue_depth) * pass_ms


@dataclass(frozen=True)
class EdgeView:
    """What the coordinator knows of one edge node."""

    node_id: str
    draft_ms_per_token: float = 0.5  # drafter time per drafted token
    rtt_ms: Mapping[str, float] = field(default_factory=dict)  # measured round trip per cloud id
    acceptance: Mapping[str, float] = field(default_factory=dict)  # per-token, per cloud model
    default_rtt_ms: float = 50.0  # assumed for a cloud it has not measured yet
    default_acceptance: float = 0.7  # assumed before any round was verified


@dataclass(frozen=True)
class Request:
    """What a request wants."""

    new_tokens: int  # tokens to generate
    objective: str = "latency"  # latency, cloud_cost or mix
    quality_floor: str = "target"  # target: lossless modes only; any: edge-only allowed
    cost_weight: float = 1.0  # mix: latency seconds one cloud CPU-second is worth
    exclude: Sequence[str] = ()  # cloud ids not to use
    k_choices: Sequence[int] = DEFAULT_K_CHOICES  # draft lengths to consider

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective {self.objective!r} not in {OBJECTIVES}")
        if self.quality_floor not in QUALITY_FLOORS:
            raise ValueError(f"quality_floor {self.quality_floor!r} not in {QUALITY_FLOORS}")
        if self.new_tokens < 1:
            raise ValueError("new_tokens must be at least 1")


@dataclass(frozen=True)
class Prediction:
    """One mode on one cloud (none for edge-only), with its predicted latency and compute."""

    mode: str
    k: int
    cloud_id: str
    latency_s: float
    cloud_cpu_s: float
    cost: float = 0.0


def expected_per_round(a: float, k: int) -> float:
    """(1 - a^(k+1)) / (1 - a): tokens one verify round adds."""
    a = min(max(a, 0.0), 0.999999)
    return (1 - a ** (k + 1)) / (1 - a)


def predict(edge: EdgeView, cloud: CloudView | None, mode: str, k: int, n: int) -> Prediction:
    """Latency and cloud CPU of ``n`` tokens in ``mode`` (k drafts a round for speculation)."""
    if mode == EDGE_ONLY:
        return Prediction(mode, 0, "", n * edge.draft_ms_per_token / 1e3, 0.0)
    assert cloud is not None, f"{mode} needs a cloud"
    rtt = edge.rtt_ms.get(cloud.node_id, edge.default_rtt_ms)
    wait = cloud.wait_ms()
    if mode == CLOUD_ONLY:
        compute = n * cloud.target_ms_per_token
        return Prediction(mode, 0, cloud.node_id, (rtt + wait + compute) / 1e3, compute / 1e3)
    a = edge.acceptance.get(cloud.model, edge.default_acceptance)
    rounds = n / expected_per_round(a, k)
    verify = cloud.verify_base_ms + k * cloud.verify_per_token_ms
    round_ms = rtt + k * edge.draft_ms_per_token + wait + verify
    # one extra round trip opens the session
    return Prediction(
        mode, k, cloud.node_id, (rtt + rounds * round_ms) / 1e3, rounds * verify / 1e3
    )


def objective_cost(p: Prediction, r: Request) -> float:
    """The number the plan minimises."""
    if r.objective == "latency":
        return p.latency_s
    if r.objective == "cloud_cost":
        return p.cloud_cpu_s + 1e-3 * p.latency_s  # latency breaks ties
    return p.latency_s + r.cost_weight * p.cloud_cpu_s


def candidates(edge: EdgeView, clouds: Sequence[CloudView], r: Request) -> list[Prediction]:
    """Every admissible (mode, k, cloud), scored, best first."""
    out: list[Prediction] = []
    if r.quality_floor == "any":
        out.append(predict(edge, None, EDGE_ONLY, 0, r.new_tokens))
    for c in clouds:
        if c.node_id in r.exclude:
            continue
        out.append(predict(edge, c, CLOUD_ONLY, 0, r.new_tokens))
        out += [predict(edge, c, SPECULATION, k, r.new_tokens) for k in r.k_choices]
    scored = [
        Prediction(p.mode, p.k, p.cloud_id, p.latency_s, p.cloud_cpu_s, objective_cost(p, r))
        for p in out
    ]
    return sorted(scored, key=lambda p: (p.cost, p.mode, p.k))


def plan(edge: EdgeView, clouds: Sequence[CloudView], r: Request) -> Prediction | None:
    """The best admissible prediction, or None when nothing is admissible."""
    c = candidates(edge, clouds, r)
    return c[0] if c else None
