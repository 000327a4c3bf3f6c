"""Verification sessions of the vLLM engine: committed tokens, sampler, owner, limits.

The rules are ``cloud_node.sessions``' (as for ``cloud_node.engine.VerifyEngine``'s sessions),
without a KV cache of ours: vLLM's prefix cache holds the context between rounds.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cloud_node.engine import RoundResult
from cloud_node.errors import check_prompt
from cloud_node.sessions import Sessions
from models.sampling import SamplingParams


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


class SessionTable(Sessions[VSession]):
    """Open sessions (``cloud_node.sessions``) of ``VSession``."""

    def open(
        self,
        session_id: str,
        prompt: Sequence[int],
        params: SamplingParams,
        owner: object | None,
        client: str,
    ) -> int:
        """Open (or, for its owner, reopen) a session over ``prompt``; the committed length."""
        self.admit(session_id, prompt, owner, client)
        rng = np.random.default_rng(params.seed)
        self.sessions[session_id] = VSession(
            list(prompt), params, rng, time.monotonic(), owner, client
        )
        return len(prompt)

    def check_prompt(self, prompt: Sequence[int]) -> None:
        """A prompt of at least one token, shorter than the context, in the vocabulary."""
        check_prompt(prompt, self.model.vocab_size, self.model.max_len)
