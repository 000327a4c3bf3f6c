"""The edge's reasoning requests and results as domain values, with the limits they must meet.

The servicer converts ProposeSteps and Reason messages to these and back; the Reasoner and the
search code never see a protobuf message of the edge's own API.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from models.reasoning.proposer import StepDraft

SPECREASON = "specreason"  # the strategy name of step speculation


@dataclass(frozen=True)
class ReasonLimits:
    """Caps on the work one request may ask of this edge; past one, INVALID_ARGUMENT."""

    max_question_chars: int = 65536  # a question's text (and a prefix's steps, together)
    max_request_id_chars: int = 128  # request ids are echoed and logged
    max_n: int = 64  # search: candidates (best-of-n samples, beam width, particles)
    max_m: int = 16  # search: expansions per beam or subtree
    max_token_budget: int = 16384  # search: drafted tokens (0 in a request: the default budget)
    max_score_budget: int = 2048  # search: scorer passes (0 in a request: the default budget)
    max_steps: int = 16  # specreason: steps per solution
    max_lookahead: int = 16  # specreason: steps drafted and scored per round
    max_propose_n: int = 64  # ProposeSteps: candidates per prefix
    max_prefixes: int = 64  # ProposeSteps: prefixes per call
    max_propose_rows: int = 256  # ProposeSteps: candidates in all (n x prefixes)
    max_prefix_steps: int = 64  # ProposeSteps: steps in one prefix
    chunk_rows: int = 16  # candidates the drafter advances in one turn before others get theirs
    search_threads: int = 4  # searches running at once (more wait for a thread)
    peer_threads: int = 8  # calls to peer edges in flight at once, over all searches
    timeout_s: float = 30.0  # deadline of each call to a cloud or a peer edge


@dataclass(frozen=True)
class ProposeTask:
    """Candidate next steps wanted for partial solutions of one question."""

    question: str
    prefixes: tuple[tuple[str, ...], ...]  # the steps so far, one tuple per partial solution
    n: int  # candidates per prefix
    temperature: float
    seed: int
    max_tokens: int | None  # cap on drafted tokens over the whole call; None: none
    delimiter: str = ""  # ends a step; empty: the proposer's own


@dataclass(frozen=True)
class Proposals:
    """Candidates per prefix, in order, and the drafter time they took."""

    per_prefix: list[list[StepDraft]]
    model_ms: float


@dataclass(frozen=True)
class ReasonTask:
    """One reasoning request: step speculation or a PRM search."""

    question: str
    strategy: str  # SPECREASON or a name in models.reasoning.strategies.STRATEGIES
    request_id: str = ""
    n: int = 8  # search: candidates
    m: int = 4  # search: expansions per beam
    threshold: float = 0.5  # specreason: keep a drafted step scoring at least this
    first_cloud_steps: int = 0  # specreason: the first steps are always the cloud's
    token_budget: int = 0  # search: drafted tokens; 0: the strategy's default
    score_budget: int = 0  # search: scorer passes; 0: the strategy's default
    seed: int = 0
    token_speculation: bool = False  # specreason: rewrite rejected steps by token speculation
    lookahead: int = 1  # specreason: steps drafted and scored per round
    separate_rewrite: bool = False  # specreason: rewrite in a second call, from scratch
    delimiter: str = ""  # ends a step; empty: the proposer's own


@dataclass
class ReasonAccount:
    """What a reasoning request did and what crossed the network."""

    drafted_tokens: int = 0
    drafted_steps: int = 0
    accepted_steps: int = 0
    scorer_calls: int = 0  # partial solutions scored (PRM passes)
    cloud_tokens: int = 0  # tokens the cloud generated
    bytes_sent: int = 0
    bytes_received: int = 0
    wall_s: float = 0.0
    cloud_draft_tokens: int = 0  # tokens of rejected drafts the target kept when rewriting
    confirmed_steps: int = 0  # accepted steps the target wrote the same after a low score


@dataclass(frozen=True)
class ReasonResult:
    """A reasoning request's solution and its account."""

    request_id: str
    answer: str  # empty when no answer step was reached
    steps: tuple[str, ...]
    text: str  # the steps joined as the drafter writes them
    account: ReasonAccount = field(default_factory=ReasonAccount)
