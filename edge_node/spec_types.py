"""The values a token speculation request runs with and answers: settings, hooks, the account."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from node_runtime.kinds import KPolicy, Mode
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc


@dataclass
class Account:
    """Where the work of one request ran and what it cost."""

    generated_tokens: int = 0
    drafted_tokens: int = 0
    accepted_tokens: int = 0
    verify_rounds: int = 0
    full_rounds: int = 0  # rounds in which every draft was kept
    wall_s: float = 0.0
    cloud_model_cpu_s: float = 0.0
    edge_model_s: float = 0.0
    bytes_sent: int = 0
    bytes_received: int = 0
    ttft_s: float = 0.0
    k_history: list[int] = field(default_factory=list)
    plan_revisions: int = 0  # times the plan changed mode or cloud mid-request
    ahead_rounds: int = 0  # rounds drafted ahead while the round before was in flight
    pipelined_rounds: int = 0  # rounds sent as drafted ahead (the verdict confirmed the guess)
    wasted_draft_tokens: int = 0  # tokens drafted ahead and thrown away (not in drafted_tokens)
    started: float = field(default_factory=time.perf_counter, repr=False)


@dataclass
class SpecResult:
    """Generated tokens and how they were made."""

    tokens: list[int]
    account: Account
    degraded: bool = False
    cloud_node: str = ""
    note: str = ""
    final_mode: Mode = Mode.SPECULATION  # the mode that produced the last tokens


@dataclass(frozen=True)
class SpecSettings:
    """One speculation request's knobs."""

    max_new: int  # tokens to generate at the most
    eos_id: int | None  # stop after this token
    k: int = 4  # starting draft length
    k_policy: KPolicy | str = KPolicy.HEURISTIC  # fixed, heuristic or rtt
    k_max: int = 16  # never draft more than this
    round_timeout_s: float = 10.0  # deadline of each verify round
    stop_ids: tuple[int, ...] = ()  # more tokens to stop after (a step delimiter, say)
    pipelined: bool = False  # draft the next round while the current one is in flight

    @property
    def stops(self) -> frozenset[int]:
        """Every token that ends the request."""
        return frozenset(self.stop_ids) | ({self.eos_id} if self.eos_id is not None else set())


CloudPicker = Callable[[Sequence[str]], Awaitable[tuple[str, pb_grpc.CloudStub] | None]]


@dataclass(frozen=True)
class Replan:
    """A revised plan for the rest of a request."""

    mode: Mode  # speculation or cloud-only
    cloud: tuple[str, pb_grpc.CloudStub]  # the cloud's id and a stub to it
    k: int  # draft length the plan assumed
    pipelined: bool = False  # speculation drafts the next round while one is in flight


@dataclass
class Hooks:
    """Optional callbacks a request runs with."""

    on_tokens: Callable[[list[int]], None] | None = None  # newly committed tokens, in order
    observe_rtt: Callable[[str, float], None] | None = None  # (cloud id, network ms) per round
    # asked every ``replan_every`` rounds and after an RTT jump: (tokens left, current cloud id)
    replan: Callable[[int, str], Awaitable[Replan | None]] | None = None
    replan_every: int = 8  # rounds between plan revisions
    rtt_jump: float = 2.0  # a round this many times slower than usual asks for a plan at once
