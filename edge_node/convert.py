"""The Edge service's messages to domain values and back: every check of a request's fields.

Used by the servicer only. Each check raises ValueError naming the field, which the servicer
answers as INVALID_ARGUMENT; sizes are checked here, before any work is done.
"""

from __future__ import annotations

import math
from typing import Protocol

from edge_node.planning import SolveTask
from edge_node.reason_types import (
    SPECREASON,
    Proposals,
    ProposeTask,
    ReasonLimits,
    ReasonResult,
    ReasonTask,
)
from edge_node.remote import draft_to_wire
from edge_node.speculation import SpecResult
from models.base import Tokenizer
from models.reasoning.strategies import STRATEGIES
from models.sampling import SamplingParams
from node_runtime.kinds import KPolicy, Mode, Objective, QualityFloor
from node_runtime.openai_api.templates import Chat, ChatTemplate
from tandem_wire.v1 import tandem_pb2 as pb

MAX_DELIMITER_CHARS = 16  # a step delimiter is one token; no token's text is longer


class SolveLimits(Protocol):
    """The limits a Solve request is checked against (the node's EdgeConfig)."""

    max_prompt_chars: int
    max_new_tokens: int
    max_request_id_chars: int
    k_max: int


def _within(field: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise ValueError(f"{field}: must be {low} to {high}, got {value}")
    return value


def _request_id(value: str, limit: int) -> str:
    if len(value) > limit:
        raise ValueError(f"request_id: at most {limit} characters")
    return value


def _delimiter(value: str) -> str:
    if len(value) > MAX_DELIMITER_CHARS:
        raise ValueError(f"delimiter: at most {MAX_DELIMITER_CHARS} characters")
    return value


def solve_from_wire(
    r: pb.SolveRequest,
    tok: Tokenizer,
    max_len: int,
    limits: SolveLimits,
    template: ChatTemplate | None = None,
) -> SolveTask:
    """A SolveRequest, checked and tokenized; a conversation is rendered with ``template``."""
    text, stop_ids = r.prompt, ()
    if r.chat_json:
        if r.prompt:
            raise ValueError("prompt: must be empty when chat_json is set")
        if template is None:
            raise ValueError("chat_json: this node has no chat template")
        chat = Chat.from_json(r.chat_json)
        text = template.render(chat)
        if chat.tools:  # a tool call ends the reply; single-token ends end it here, on the edge
            stop_ids = _single_tokens(tok, template.tool_stops())
    if not text or len(text) > limits.max_prompt_chars:
        raise ValueError(f"prompt: must be 1 to {limits.max_prompt_chars} characters")
    try:
        ids = tok.encode(text)
    except ValueError as exc:
        raise ValueError(f"prompt: {exc}") from None
    # a rendered template may open with the BOS token itself (ChatML's <|im_start|>)
    prompt = ids if r.chat_json and ids[:1] == [tok.bos_id] else [tok.bos_id, *ids]
    if len(prompt) >= max_len - 1:
        raise ValueError(f"prompt: {len(prompt)} tokens leave no room in {max_len}")
    try:
        s = r.sampling
        params = SamplingParams(s.temperature, s.top_p or 1.0, s.seed)
    except ValueError as exc:
        raise ValueError(f"sampling: {exc}") from None
    max_new = _within("max_new_tokens", r.max_new_tokens, 0, limits.max_new_tokens)
    cost_weight = r.cost_weight
    if not (math.isfinite(cost_weight) and cost_weight >= 0):
        raise ValueError(f"cost_weight: must be a finite number >= 0, got {cost_weight}")
    return SolveTask(
        prompt=tuple(prompt),
        params=params,
        max_new=max_new or limits.max_new_tokens,
        mode=Mode.from_wire(r.mode),
        k=_within("draft_length", r.draft_length, 0, limits.k_max),
        k_policy=KPolicy.parse(r.k_policy) if r.k_policy else None,
        objective=Objective.from_wire(r.objective),
        floor=None
        if r.quality_floor == pb.QUALITY_UNSPECIFIED
        else QualityFloor.from_wire(r.quality_floor),
        cost_weight=cost_weight,
        request_id=_request_id(r.request_id, limits.max_request_id_chars),
        pipelined=r.pipelined,
        stop_ids=stop_ids,
    )


def _single_tokens(tok: Tokenizer, texts: tuple[str, ...]) -> tuple[int, ...]:
    """The ids of those ``texts`` that are one token of ``tok``."""
    out = []
    for text in texts:
        try:
            ids = tok.encode(text)
        except ValueError:
            continue
        if len(ids) == 1:
            out.append(ids[0])
    return tuple(out)


def solve_reply_to_wire(rid: str, result: SpecResult, tok: Tokenizer) -> pb.SolveReply:
    """A finished request as its SolveReply."""
    a = result.account
    return pb.SolveReply(
        request_id=rid,
        text=tok.decode(result.tokens),
        tokens=result.tokens,
        mode=Mode(result.final_mode).to_wire(),
        degraded=result.degraded,
        cloud_node=result.cloud_node,
        note=result.note,
        account=pb.Account(
            generated_tokens=a.generated_tokens,
            drafted_tokens=a.drafted_tokens,
            accepted_tokens=a.accepted_tokens,
            verify_rounds=a.verify_rounds,
            wall_s=a.wall_s,
            cloud_model_cpu_s=a.cloud_model_cpu_s,
            edge_model_s=a.edge_model_s,
            bytes_sent=a.bytes_sent,
            bytes_received=a.bytes_received,
            ttft_s=a.ttft_s,
            ahead_rounds=a.ahead_rounds,
            pipelined_rounds=a.pipelined_rounds,
            wasted_draft_tokens=a.wasted_draft_tokens,
        ),
    )


def reason_from_wire(r: pb.ReasonRequest, limits: ReasonLimits) -> ReasonTask:
    """A ReasonRequest, checked against ``limits``; zeros take the documented defaults."""
    if not r.question or len(r.question) > limits.max_question_chars:
        raise ValueError(f"question: must be 1 to {limits.max_question_chars} characters")
    if r.strategy != SPECREASON and r.strategy not in STRATEGIES:
        raise ValueError(f"strategy: {r.strategy!r} not in {SPECREASON}, {sorted(STRATEGIES)}")
    if not 0.0 <= r.threshold <= 1.0:
        raise ValueError(f"threshold: must be 0 to 1, got {r.threshold}")
    return ReasonTask(
        question=r.question,
        strategy=r.strategy,
        request_id=_request_id(r.request_id, limits.max_request_id_chars),
        n=_within("n", r.n, 0, limits.max_n) or 8,
        m=_within("m", r.m, 0, limits.max_m) or 4,
        threshold=r.threshold or 0.5,
        first_cloud_steps=_within("first_cloud_steps", r.first_cloud_steps, 0, limits.max_steps),
        token_budget=_within("token_budget", r.token_budget, 0, limits.max_token_budget),
        score_budget=_within("score_budget", r.score_budget, 0, limits.max_score_budget),
        seed=int(r.seed),
        token_speculation=r.token_speculation,
        lookahead=max(1, _within("lookahead", r.lookahead, 0, limits.max_lookahead)),
        separate_rewrite=r.separate_rewrite,
        delimiter=_delimiter(r.delimiter),
    )


def reason_result_to_wire(res: ReasonResult) -> pb.ReasonReply:
    """A reasoning result as its ReasonReply."""
    a = res.account
    return pb.ReasonReply(
        request_id=res.request_id,
        answer=res.answer,
        steps=list(res.steps),
        text=res.text,
        account=pb.ReasonAccount(
            drafted_tokens=a.drafted_tokens,
            drafted_steps=a.drafted_steps,
            accepted_steps=a.accepted_steps,
            scorer_calls=a.scorer_calls,
            cloud_tokens=a.cloud_tokens,
            bytes_sent=a.bytes_sent,
            bytes_received=a.bytes_received,
            wall_s=a.wall_s,
            cloud_draft_tokens=a.cloud_draft_tokens,
            confirmed_steps=a.confirmed_steps,
        ),
    )


def propose_from_wire(r: pb.ProposeRequest, limits: ReasonLimits) -> ProposeTask:
    """A ProposeRequest, checked against ``limits``."""
    n = _within("n", r.n, 1, limits.max_propose_n)
    _within("prefixes", len(r.prefixes), 1, limits.max_prefixes)
    if n * len(r.prefixes) > limits.max_propose_rows:
        raise ValueError(
            f"n x prefixes: {n} x {len(r.prefixes)} candidates, at most {limits.max_propose_rows}"
        )
    chars = len(r.question)
    for p in r.prefixes:
        _within("prefixes.steps", len(p.steps), 0, limits.max_prefix_steps)
        chars = max(chars, len(r.question) + sum(len(s) for s in p.steps))
    if chars > limits.max_question_chars:
        raise ValueError(f"question: with a prefix's steps, at most {limits.max_question_chars}")
    if not (math.isfinite(r.temperature) and r.temperature >= 0):
        raise ValueError(f"temperature: must be a finite number >= 0, got {r.temperature}")
    return ProposeTask(
        question=r.question,
        prefixes=tuple(tuple(p.steps) for p in r.prefixes),
        n=n,
        temperature=r.temperature,
        seed=int(r.seed),
        max_tokens=_within("max_tokens", r.max_tokens, 0, 2**31 - 1) or None,
        delimiter=_delimiter(r.delimiter),
    )


def proposals_to_wire(p: Proposals) -> pb.ProposeReply:
    """Proposals as their ProposeReply."""
    return pb.ProposeReply(
        per_prefix=[pb.Candidates(drafts=[draft_to_wire(d) for d in c]) for c in p.per_prefix],
        model_ms=p.model_ms,
    )
