"""What clients ask the coordinator to plan or run, and the plan it answers: domain types only.

The servicer converts the wire messages to and from these (``coordinator.convert``); the scheduler
(``coordinator.jobs``) and the simulations see nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

from coordinator.costmodel import Prediction, Request
from coordinator.nodes import NodeInfo
from node_runtime.kinds import Mode, Objective, QualityFloor


class NoPlan(Exception):
    """Nothing admissible: no live cloud for a lossless request, say (UNAVAILABLE)."""


@dataclass(frozen=True)
class PlanQuery:
    """One edge's request for a plan."""

    edge_id: str  # the edge that will run the request; "" for an anonymous one
    request: Request  # what the request wants (tokens, objective, floor, exclusions)
    model: str = ""  # target model wanted; "" means any
    tokenizer: str = ""  # the edge's tokenizer fingerprint; "" means the one it registered


@dataclass(frozen=True)
class Plan:
    """The chosen prediction, the cloud it runs on, and the runners-up."""

    best: Prediction  # the admissible prediction with the lowest objective cost
    cloud: NodeInfo | None  # the cloud of ``best``; None for edge-only
    candidates: tuple[Prediction, ...]  # every admissible prediction, best first
    reason: str  # one line a person can read: mode, k, what it minimises and its figures

    @property
    def mode(self) -> Mode:
        """The mode the request should run in."""
        return self.best.mode


@dataclass(frozen=True)
class Sampling:
    """How a job's tokens are chosen (temperature 0 is greedy)."""

    temperature: float = 0.0  # softmax temperature; 0 means argmax
    top_p: float = 0.0  # nucleus mass; 0 is read as 1 by the edge
    seed: int = 0  # sampling seed


@dataclass(frozen=True)
class Job:
    """A client's job: a prompt to run on an edge node, and what it optimises."""

    job_id: str  # the client's id; "" means the coordinator makes one
    prompt: str  # text, non-empty
    sampling: Sampling  # token choice
    objective: Objective  # what the edge's plan minimises
    quality_floor: QualityFloor  # the least quality accepted
    cost_weight: float  # MIX: latency seconds one cloud CPU-second is worth; 0: the default
    deadline_s: float  # 0: the coordinator's default
    max_new_tokens: int  # 0: the edge's default
    edge_id: str = ""  # run on this edge; "" means the least busy
    pipelined: bool = False  # speculation must draft ahead; False: the edge's plan chooses
    mode: Mode | None = None  # None: the edge plans the mode
    k_policy: str = ""  # draft-length policy (node_runtime.kinds.KPolicy); "": the edge's
    draft_length: int = 0  # starting k; 0: the edge's or its plan's
    chat_json: str = ""  # a conversation the edge renders with its chat template, not `prompt`
