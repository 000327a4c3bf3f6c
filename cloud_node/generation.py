"""Cloud-only generation: admission, bounded in total and per client, and each generation's state.

The iteration loop (``cloud_node.iterations``) advances every admitted generation by one token in
each forward pass it runs, together with the verify rounds waiting then; a new generation feeds
its prompt in its first pass. Admission is bounded in total and per client: past either bound the
request is refused with RESOURCE_EXHAUSTED and the reason, instead of waiting without end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cloud_node.errors import RequestError
from models.base import CausalLM, LMSession
from models.sampling import SamplingParams, probs, sample


@dataclass(frozen=True)
class GenerationLimits:
    """Bounds of cloud-only generation on one node."""

    max_active: int = 64  # generations admitted at once, in a pass or waiting for one
    max_per_client: int = 32  # of those, held by one client at the most
    batch: int = 16  # generations advanced by one forward pass at the most
    passes_per_call: int = 64  # passes one model-thread call runs at the most, back to back

    def __post_init__(self) -> None:
        if not 1 <= self.max_per_client <= self.max_active or self.batch < 1:
            raise ValueError("generation limits: 1 <= max_per_client <= max_active and batch >= 1")
        if self.passes_per_call < 1:
            raise ValueError("generation limits: passes_per_call >= 1")


@dataclass(frozen=True)
class Generated:
    """What one generation produced and what it cost.

    ``model_ms`` is the latency the request spent in the model (whole iterations); ``share_ms``
    and ``model_cpu_s`` are what it cost: its part of each iteration, split by tokens fed.
    """

    tokens: list[int]
    model_ms: float  # wall time of the iterations it took part in
    model_cpu_s: float  # its share of those iterations' thread CPU seconds
    share_ms: float = 0.0  # its share of those iterations' wall time


@dataclass(eq=False)
class Generation:
    """One sequence being generated; the same sampling steps as ``models.generate.generate``."""

    session: LMSession
    prompt: list[int]
    params: SamplingParams
    max_new: int
    eos_id: int | None
    client: str
    future: asyncio.Future[Generated]
    rng: np.random.Generator = field(init=False)
    out: list[int] = field(default_factory=list)
    ms: float = 0.0  # wall ms of the iterations it took part in
    share_ms: float = 0.0  # its share of those
    cpu_s: float = 0.0  # its share of their thread CPU seconds

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.params.seed)

    def feed(self) -> list[int]:
        """The tokens the next pass feeds: the prompt first, then the last sampled token."""
        return self.prompt if not self.out else self.out[-1:]

    def charge(self, ms: float, share: float, cpu_s: float) -> None:
        """Charge this generation for one iteration: its wall ``ms``, and ``share`` of it and
        of its ``cpu_s``."""
        self.ms += ms
        self.share_ms += ms * share
        self.cpu_s += cpu_s * share

    def take(self, logits: np.ndarray) -> bool:
        """Sample the next token from the last position's logits [V]; True when finished."""
        if self.params.greedy:  # what sampling a one-hot distribution gives, without the draw
            token = int(logits.argmax())
        else:
            token = sample(probs(logits, self.params), self.rng)
        self.out.append(token)
        return token == self.eos_id or len(self.out) >= self.max_new

    def result(self) -> Generated:
        """The finished generation."""
        return Generated(self.out, self.ms, self.cpu_s, self.share_ms)


class GenerationQueue:
    """The admitted generations, oldest first, and their per-client counts."""

    def __init__(self, lm: CausalLM, limits: GenerationLimits) -> None:
        self.lm = lm
        self.limits = limits
        self._active: list[Generation] = []  # admission order: the oldest go in the next pass
        self._per_client: dict[str, int] = {}

    @property
    def active(self) -> int:
        """Generations admitted and not finished."""
        return len(self._active)

    @property
    def waiting(self) -> int:
        """Admitted generations that the next pass cannot take."""
        return max(0, len(self._active) - self.limits.batch)

    def admit(
        self,
        prompt: Sequence[int],
        params: SamplingParams,
        max_new: int,
        eos_id: int | None,
        client: str,
    ) -> Generation:
        """A new generation of up to ``max_new`` tokens after ``prompt`` (checked by the caller);
        RequestError("exhausted") when the node or this client's share is full."""
        lim, held = self.limits, self._per_client.get(client, 0)
        if len(self._active) >= lim.max_active:
            raise RequestError(
                "exhausted", f"generation queue full ({lim.max_active} generations admitted)"
            )
        if held >= lim.max_per_client:
            raise RequestError(
                "exhausted",
                f"client {client!r} holds {held} generations, its share of {lim.max_active}",
            )
        self._per_client[client] = held + 1
        fut: asyncio.Future[Generated] = asyncio.get_running_loop().create_future()
        cap = min(max_new, self.lm.max_len - len(prompt))
        g = Generation(self.lm.session(), list(prompt), params, cap, eos_id, client, fut)
        self._active.append(g)
        return g

    def leave(self, g: Generation) -> None:
        """Forget ``g`` (finished, failed or given up by its caller)."""
        if g in self._active:
            self._active.remove(g)
            left = self._per_client.get(g.client, 1) - 1
            if left > 0:
                self._per_client[g.client] = left
            else:
                self._per_client.pop(g.client, None)

    def next_batch(self) -> list[Generation]:
        """The oldest live generations, as many as one pass takes."""
        live = [g for g in self._active if not g.future.done()]
        return live[: self.limits.batch]

    def fail_all(self, err: RequestError) -> None:
        """Fail every admitted generation with ``err`` (the node is stopping)."""
        for g in self._active:
            if not g.future.done():
                g.future.set_exception(RequestError(err.kind, str(err)))
