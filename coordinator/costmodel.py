"""The scheduler: a pure cost model over measured figures, and the plan it picks.

For each mode a request can run in, predict its latency and its cloud compute from what the nodes
measured (RTT, draft ms per token, verify ms as a function of k, target ms per token, load,
acceptance); score each by the request's objective; keep the modes its quality floor admits.
Token speculation is a candidate plain and, where the request allows it, pipelined (the edge
drafts the next round while one is in flight). Figures a node has not measured yet come from its
device profile when it names one (``coordinator.planner``), else from priors. Simulations import
these functions; the coordinator calls them on its live snapshot.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from models.metrics import (
    PRIOR_ACCEPTANCE,
    PRIOR_VERIFY_BASE_MS,
    PRIOR_VERIFY_PER_TOKEN_MS,
    expected_tokens_per_round,
    pipeline_hit_probability,
    pipelined_round_ms,
    round_ms,
    verify_ms,
)
from node_runtime.kinds import Mode, Objective, QualityFloor

DEFAULT_K_CHOICES = (1, 2, 3, 4, 6, 8)


@dataclass(frozen=True)
class CloudView:
    """What the coordinator knows of one cloud node."""

    node_id: str
    target_ms_per_token: float = 2.0  # autoregressive target time per token, unloaded
    verify_base_ms: float = PRIOR_VERIFY_BASE_MS  # verify pass, fixed part
    verify_per_token_ms: float = PRIOR_VERIFY_PER_TOKEN_MS  # verify pass, per token fed (k + 1)
    busy_fraction: float = 0.0  # share of time its model thread is busy (0..1)
    queue_depth: int = 0  # verify rounds waiting
    model: str = ""  # target model name
    tokenizer: str = ""  # tokenizer fingerprint; speculation needs the edge's to be the same
    # Verify pass ms by draft length, from a device profile; where a k is listed it replaces the
    # linear fit (a profile's pass is a roofline, not a line). Empty once the node measured its own.
    verify_by_k: Mapping[int, float] = field(default_factory=dict)
    # Sequences sharing each pass the cost figures describe: a round's (or a token's) share of the
    # cloud's compute is its pass divided by this. 1: each figure is one sequence's own pass.
    batch: int = 1
    max_batch: int = 16  # verify rounds one pass takes at most (the cloud's --max-batch)

    def verify_pass_ms(self, k: int) -> float:
        """One verify pass over k drafts (k + 1 tokens fed): the profile's, else the fit's."""
        listed = self.verify_by_k.get(k)
        if listed is not None:
            return listed
        return verify_ms(self.verify_base_ms, self.verify_per_token_ms, k)

    def wait_ms(self) -> float:
        """Expected wait of one model call behind other work.

        The cloud schedules at the iteration level (``cloud_node.iterations``): a verify round
        or a generation step that arrives while a pass runs joins the next pass together with
        everything else waiting, up to ``max_batch`` rounds, rather than queueing behind each
        call ahead of it. It waits for the rest of the pass in progress (half a pass on average,
        when the thread is busy: ``busy_fraction``) and one more pass for each full batch
        already queued. A FIFO queue's rho / (1 - rho) passes overstated this several times
        over on a busy cloud and kept speculation off it where it won.
        """
        rho = min(max(self.busy_fraction, 0.0), 1.0)
        pass_ms = self.verify_pass_ms(3)  # a typical round
        return (0.5 * rho + self.queue_depth // max(self.max_batch, 1)) * pass_ms


@dataclass(frozen=True)
class EdgeView:
    """What the coordinator knows of one edge node."""

    node_id: str
    draft_ms_per_token: float = 0.5  # drafter time per drafted token
    rtt_ms: Mapping[str, float] = field(default_factory=dict)  # measured round trip per cloud id
    acceptance: Mapping[str, float] = field(default_factory=dict)  # per-token, per cloud model
    default_rtt_ms: float = 50.0  # assumed for a cloud it has not measured yet
    default_acceptance: float = PRIOR_ACCEPTANCE  # assumed before any round was verified
    tokenizer: str = ""  # tokenizer fingerprint; token ids go only to clouds with the same one

    def shares_tokenizer(self, cloud: CloudView) -> bool:
        """Whether token ids mean the same on both ends: the advertised fingerprints are equal."""
        return self.tokenizer == cloud.tokenizer


@dataclass(frozen=True)
class Request:
    """What a request wants."""

    new_tokens: int  # tokens to generate
    objective: Objective = Objective.LATENCY  # what the plan minimises
    quality_floor: QualityFloor = QualityFloor.TARGET  # TARGET: lossless modes only
    cost_weight: float = 1.0  # mix: latency seconds one cloud CPU-second is worth
    exclude: Sequence[str] = ()  # cloud ids not to use
    k_choices: Sequence[int] = DEFAULT_K_CHOICES  # draft lengths to consider
    pipelined: bool = False  # speculation must draft the next round while one is in flight
    allow_pipelined: bool = False  # the edge can draft ahead: pipelined speculation is a choice
    text_drafts: bool = False  # greedy, and the edge drafts as text: any tokenizer will do

    def __post_init__(self) -> None:
        if not isinstance(self.objective, Objective):
            raise ValueError(f"objective: {self.objective!r} is not an Objective")
        if not isinstance(self.quality_floor, QualityFloor):
            raise ValueError(f"quality_floor: {self.quality_floor!r} is not a QualityFloor")
        if self.new_tokens < 1:
            raise ValueError("new_tokens: must be at least 1")
        # inf x 0 cloud CPU (edge-only) is NaN, and NaN costs make every plan compare false
        if not (math.isfinite(self.cost_weight) and self.cost_weight >= 0):
            raise ValueError(f"cost_weight: must be finite and >= 0, got {self.cost_weight}")


@dataclass(frozen=True)
class Prediction:
    """One mode on one cloud (none for edge-only), with its predicted latency and compute."""

    mode: Mode
    k: int
    cloud_id: str
    latency_s: float
    cloud_cpu_s: float
    cost: float = 0.0
    pipelined: bool = False  # speculation with the next round drafted while one is in flight


def predict(
    edge: EdgeView,
    cloud: CloudView | None,
    mode: Mode,
    k: int,
    n: int,
    pipelined: bool = False,
) -> Prediction:
    """Latency and cloud CPU of ``n`` tokens in ``mode`` (k drafts a round for speculation;
    ``pipelined``: the next round drafted while one is in flight).

    Figures are read as at least zero, so a bad measurement can never predict negative time.
    """
    p = _predict(edge, cloud, mode, k, n, pipelined)
    piped = pipelined and mode is Mode.SPECULATION
    return Prediction(
        p.mode, p.k, p.cloud_id, max(p.latency_s, 0.0), max(p.cloud_cpu_s, 0.0), pipelined=piped
    )


def _predict(
    edge: EdgeView, cloud: CloudView | None, mode: Mode, k: int, n: int, pipelined: bool
) -> Prediction:
    if mode is Mode.EDGE_ONLY:
        return Prediction(mode, 0, "", n * edge.draft_ms_per_token / 1e3, 0.0)
    assert cloud is not None, f"{mode} needs a cloud"
    rtt = edge.rtt_ms.get(cloud.node_id, edge.default_rtt_ms)
    wait = cloud.wait_ms()
    share = max(cloud.batch, 1)
    if mode is Mode.CLOUD_ONLY:
        compute = n * cloud.target_ms_per_token
        return Prediction(
            mode, 0, cloud.node_id, (rtt + wait + compute) / 1e3, compute / share / 1e3
        )
    a = edge.acceptance.get(cloud.model, edge.default_acceptance)
    rounds = n / expected_tokens_per_round(a, k)
    verify = cloud.verify_pass_ms(k)
    plain = round_ms(rtt, k, edge.draft_ms_per_token, verify, wait)
    rounds_ms = rounds * plain
    if pipelined:  # the bonus token is guessed right about as often as a draft is kept
        hit = pipeline_hit_probability(a, k, a)
        ahead = pipelined_round_ms(rtt, k, edge.draft_ms_per_token, verify, hit, wait)
        # the first round has nothing in flight to overlap with: it goes as a plain one
        # (written as plain time plus the gain, so no gain predicts exactly the plain time)
        rounds_ms += (rounds - min(rounds, 1.0)) * (ahead - plain)
    # one extra round trip opens the session
    return Prediction(
        mode, k, cloud.node_id, (rtt + rounds_ms) / 1e3, rounds * verify / share / 1e3
    )


def objective_cost(p: Prediction, r: Request) -> float:
    """The number the plan minimises."""
    if r.objective is Objective.LATENCY:
        return p.latency_s
    if r.objective is Objective.CLOUD_COST:
        return p.cloud_cpu_s + 1e-3 * p.latency_s  # latency breaks ties
    return p.latency_s + r.cost_weight * p.cloud_cpu_s


def candidates(edge: EdgeView, clouds: Sequence[CloudView], r: Request) -> list[Prediction]:
    """Every admissible (mode, k, cloud), scored, best first.

    Token speculation is admissible only on clouds that share the edge's tokenizer, unless the
    request's drafts may travel as text (``text_drafts``: greedy, re-tokenized by the cloud);
    cloud-only carries text, so any cloud may serve it. Speculation is predicted plain,
    pipelined, or both (``speculation_variants``).
    """
    out: list[Prediction] = []
    if r.quality_floor.allows(Mode.EDGE_ONLY):
        out.append(predict(edge, None, Mode.EDGE_ONLY, 0, r.new_tokens))
    for c in clouds:
        if c.node_id in r.exclude:
            continue
        out.append(predict(edge, c, Mode.CLOUD_ONLY, 0, r.new_tokens))
        if edge.shares_tokenizer(c) or r.text_drafts:
            n = r.new_tokens
            out += [
                predict(edge, c, Mode.SPECULATION, k, n, pipe)
                for pipe in speculation_variants(r)
                for k in r.k_choices
            ]
    scored = [replace(p, cost=objective_cost(p, r)) for p in out]
    # on a tie the plainer plan wins: drafting ahead spends edge work for nothing then
    return sorted(scored, key=lambda p: (p.cost, p.mode, p.pipelined, p.k))


def speculation_variants(r: Request) -> tuple[bool, ...]:
    """Whether speculation is predicted pipelined: only when the request insists, both ways
    when it allows it, plain otherwise."""
    if r.pipelined:
        return (True,)
    return (False, True) if r.allow_pipelined else (False,)


def plan(edge: EdgeView, clouds: Sequence[CloudView], r: Request) -> Prediction | None:
    """The best admissible prediction, or None when nothing is admissible."""
    c = candidates(edge, clouds, r)
    return c[0] if c else None
