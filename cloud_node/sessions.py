"""The verification sessions a cloud engine holds, whatever runs its model.

Both engines (``cloud_node.engine.VerifyEngine``, torch; ``cloud_node.vllm_engine``, vLLM) keep
their sessions here, under one set of rules:

- a session belongs to the stream that opened it (``owner``): another stream naming it is told
  it does not exist, and may not take its id;
- sessions are bounded per node and per client (``client``, the caller's id), past either
  RESOURCE_EXHAUSTED;
- sessions idle past the TTL are dropped (never one with a round in flight).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

from cloud_node.errors import RequestError, check_prompt, check_token_ids
from models.sampling import SamplingParams

if TYPE_CHECKING:
    from cloud_node.engine import EngineConfig
    from cloud_node.iterations import Round


class Sized(Protocol):
    """The model's sizes the checks need."""

    vocab_size: int
    max_len: int


class Held(Protocol):
    """What the table reads of a session."""

    owner: object | None
    client: str
    busy: bool
    last_used: float
    params: SamplingParams


S = TypeVar("S", bound=Held)
MAX_SESSION_ID = 128  # characters


class Sessions(Generic[S]):
    """Open sessions by id, and the checks on what they are asked to do."""

    def __init__(self, config: EngineConfig, model: Sized) -> None:
        self.config, self.model = config, model
        self.sessions: dict[str, S] = {}

    def admit(
        self, session_id: str, prompt: Sequence[int], owner: object | None, client: str
    ) -> None:
        """Check an open (or, for its owner, a reopen) of ``session_id`` over ``prompt``; the
        caller then puts the new session under that id."""
        if not session_id or len(session_id) > MAX_SESSION_ID:
            raise RequestError("invalid", f"session_id must be 1 to {MAX_SESSION_ID} characters")
        check_prompt(prompt, self.model.vocab_size, self.model.max_len)
        held = self.sessions.get(session_id)
        if held is not None and held.owner is not owner:
            raise RequestError("exists", f"session_id {session_id!r} is held by another stream")
        if held is not None:
            return
        c = self.config
        if len(self.sessions) >= c.max_sessions:
            raise RequestError("exhausted", f"all {c.max_sessions} sessions are in use")
        mine = sum(1 for s in self.sessions.values() if s.client == client)
        if mine >= c.max_client_sessions:
            raise RequestError(
                "exhausted",
                f"client {client!r} holds {mine} sessions, its share of {c.max_sessions}",
            )

    def session(self, session_id: str, owner: object | None) -> S:
        """``owner``'s session, else NOT_FOUND (another stream's session does not exist)."""
        s = self.sessions.get(session_id)
        if s is None or s.owner is not owner:
            raise RequestError("not_found", f"unknown session {session_id!r} on this stream")
        return s

    def close(self, session_id: str, owner: object | None) -> bool:
        """Forget a session of ``owner``; False when it was not open. NOT_FOUND-kind
        RequestError when another owner holds it."""
        if self.sessions.get(session_id) is None:
            return False
        self.session(session_id, owner)
        del self.sessions[session_id]
        return True

    def close_owned(self, owner: object) -> int:
        """Forget every session of ``owner`` (its stream ended); how many there were."""
        mine = [k for k, s in self.sessions.items() if s.owner is owner]
        for k in mine:
            del self.sessions[k]
        return len(mine)

    def expire(self) -> int:
        """Drop sessions idle past the TTL; how many."""
        now = time.monotonic()
        dead = [
            k
            for k, s in self.sessions.items()
            if not s.busy and now - s.last_used > self.config.session_ttl_s
        ]
        for k in dead:
            del self.sessions[k]
        return len(dead)

    def validate(self, r: Round, owner: object | None, min_draft: int) -> S:
        """The round's session, or a RequestError naming what is wrong with the round (drafts
        ``min_draft`` to ``max_draft``, in the vocabulary, within the context)."""
        s = self.session(r.session_id, owner)
        k, top = len(r.proposal.tokens), self.config.max_draft
        if not min_draft <= k <= top:
            raise RequestError("invalid", f"draft length {k} outside [{min_draft}, {top}]")
        check_token_ids(r.proposal.tokens, self.model.vocab_size, "draft")
        if r.base_position + k > self.model.max_len - 1:
            raise RequestError(
                "invalid",
                f"base_position {r.base_position} + {k} drafts exceed max_len {self.model.max_len}",
            )
        if not s.params.greedy and r.proposal.q is None:
            raise RequestError("invalid", "q: sampled requests must send draft distributions")
        return s
