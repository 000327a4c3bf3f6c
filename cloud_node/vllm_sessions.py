"""Verification sessions of the vLLM engine: committed tokens, sampler, owner, limits.

The same rules as ``cloud_node.engine.VerifyEngine``'s sessions (a session belongs to the stream
that opened it; per-client shares; idle sessions expire), without a KV cache of ours: vLLM's
prefix cache holds the context between rounds.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from cloud_node.engine import EngineConfig, Round, RoundResult
from cloud_node.errors import RequestError, check_prompt, check_token_ids
from models.sampling import SamplingParams


class Sized(Protocol):
    """The model's sizes the checks need."""

    vocab_size: int
    max_len: int


@dataclass
class VSession:
    """One sequence being verified."""

    committed: list[int]
    params: SamplingParams
    rng: np.random.Generator  # acceptance tests, residual tests and vLLM request seeds
    last_used: float
    owner: object | None = None  # the verify stream that opened it
    client: str = ""  # who holds it, for the per-client share of sessions
    last_result: RoundResult | None = None
    busy: bool = False


class SessionTable:
    """Open sessions and the checks on what they are asked to do."""

    def __init__(self, config: EngineConfig, model: Sized) -> None:
        self.config = config
        self.model = model
        self.sessions: dict[str, VSession] = {}

    def open(
        self,
        session_id: str,
        prompt: Sequence[int],
        params: SamplingParams,
        owner: object | None,
        client: str,
    ) -> int:
        """Open (or, for its owner, reopen) a session over ``prompt``; the committed length."""
        if not session_id or len(session_id) > 128:
            raise RequestError("invalid", "session_id must be 1 to 128 characters")
        self.check_prompt(prompt)
        held = self.sessions.get(session_id)
        if held is not None and held.owner is not owner:
            raise RequestError("exists", f"session_id {session_id!r} is held by another stream")
        if held is None:
            self._admit(client)
        rng = np.random.default_rng(params.seed)
        self.sessions[session_id] = VSession(
            list(prompt), params, rng, time.monotonic(), owner, client
        )
        return len(prompt)

    def _admit(self, client: str) -> None:
        c = self.config
        if len(self.sessions) >= c.max_sessions:
            raise RequestError("exhausted", f"all {c.max_sessions} sessions are in use")
        held = sum(1 for s in self.sessions.values() if s.client == client)
        if held >= c.max_client_sessions:
            raise RequestError(
                "exhausted",
                f"client {client!r} holds {held} sessions, its share of {c.max_sessions}",
            )

    def close(self, session_id: str, owner: object | None) -> bool:
        """Forget a session of ``owner``; False when it was not open."""
        if self.sessions.get(session_id) is None:
            return False
        self.session(session_id, owner)
        del self.sessions[session_id]
        return True

    def close_owned(self, owner: object) -> int:
        """Forget every session of ``owner``; how many there were."""
        mine = [k for k, s in self.sessions.items() if s.owner is owner]
        for k in mine:
            del self.sessions[k]
        return len(mine)

    def session(self, session_id: str, owner: object | None) -> VSession:
        """``owner``'s session, else NOT_FOUND (another stream's session does not exist)."""
        s = self.sessions.get(session_id)
        if s is None or s.owner is not owner:
            raise RequestError("not_found", f"unknown session {session_id!r} on this stream")
        return s

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

    def check_prompt(self, prompt: Sequence[int]) -> None:
        """A prompt of at least one token, shorter than the context, in the vocabulary."""
        check_prompt(prompt, self.model.vocab_size, self.model.max_len)

    def validate(self, r: Round, owner: object | None) -> VSession:
        """The round's session, or a RequestError naming what is wrong with the round."""
        s = self.session(r.session_id, owner)
        k = len(r.proposal.tokens)
        if not 1 <= k <= self.config.max_draft:
            raise RequestError("invalid", f"draft length {k} outside [1, {self.config.max_draft}]")
        check_token_ids(r.proposal.tokens, self.model.vocab_size, "draft")
        if r.base_position + k > self.model.max_len - 1:
            raise RequestError(
                "invalid",
                f"base_position {r.base_position} + {k} drafts exceed max_len {self.model.max_len}",
            )
        if not s.params.greedy and r.proposal.q is None:
            raise RequestError("invalid", "q: sampled requests must send draft distributions")
        return s
