"""Cloud-only generation: admitted up to a bound, continuously batched, one token per pass.

Every admitted generation advances by one token in each forward pass, together with the others
(a new one joins with its prompt as its feed). One call on the model thread, at generation
priority, runs passes back to back until a verify round or step work waits, a newcomer could
join, or ``passes_per_call`` is reached: a verify round waits for at most one pass, never for
whole generations, and an idle node pays no thread hand-off per token.
Admission is bounded in total and per client: past either bound the request is refused with
RESOURCE_EXHAUSTED and the reason, instead of waiting without end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cloud_node.errors import RequestError, model_failure
from cloud_node.model_thread import ModelThread, Priority
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


@dataclass(frozen=True)
class Generated:
    """What one generation produced and what it cost."""

    tokens: list[int]
    model_ms: float  # wall time of the passes it took part in
    model_cpu_s: float  # its share of those passes' CPU seconds


@dataclass(eq=False)
class _Generation:
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
    ms: float = 0.0
    cpu_s: float = 0.0

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.params.seed)

    def feed(self) -> list[int]:
        """The tokens the next pass feeds: the prompt first, then the last sampled token."""
        return self.prompt if not self.out else self.out[-1:]

    def add_pass(self, ms: float, cpu_s: float) -> None:
        """Charge this generation its part of one pass."""
        self.ms += ms
        self.cpu_s += cpu_s

    def take(self, logits: np.ndarray) -> bool:
        """Sample the next token from the last position's logits [V]; True when finished."""
        token = sample(probs(logits, self.params), self.rng)
        self.out.append(token)
        return token == self.eos_id or len(self.out) >= self.max_new


class GenerationBatcher:
    """Admits generations and advances them together on the model thread."""

    def __init__(self, lm: CausalLM, thread: ModelThread, limits: GenerationLimits) -> None:
        self.lm = lm
        self.thread = thread
        self.limits = limits
        self._active: list[_Generation] = []  # admission order: the oldest go in the next pass
        self._per_client: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self.passes = 0

    @property
    def active(self) -> int:
        """Generations admitted and not finished."""
        return len(self._active)

    @property
    def waiting(self) -> int:
        """Admitted generations that the next pass cannot take."""
        return max(0, len(self._active) - self.limits.batch)

    def start(self) -> None:
        """Start the pass loop on the running event loop."""
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop the pass loop; generations still admitted fail as unavailable."""
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        for g in self._active:
            if not g.future.done():
                g.future.set_exception(RequestError("unavailable", "cloud node is stopping"))
        self._active.clear()

    def _admit(self, client: str) -> None:
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

    def _leave(self, g: _Generation) -> None:
        left = self._per_client.get(g.client, 1) - 1
        if left > 0:
            self._per_client[g.client] = left
        else:
            self._per_client.pop(g.client, None)

    async def generate(
        self,
        prompt: Sequence[int],
        params: SamplingParams,
        max_new: int,
        eos_id: int | None,
        client: str = "",
    ) -> Generated:
        """Up to ``max_new`` tokens after ``prompt`` (checked by the caller), stopping after
        ``eos_id``; RequestError("exhausted") when the node or this client's share is full."""
        self._admit(client)
        fut: asyncio.Future[Generated] = asyncio.get_running_loop().create_future()
        cap = min(max_new, self.lm.max_len - len(prompt))
        g = _Generation(self.lm.session(), list(prompt), params, cap, eos_id, client, fut)
        self._active.append(g)
        self._wake.set()
        self.start()
        try:
            return await fut
        finally:
            self._leave(g)
            if g in self._active:  # cancelled by its caller: the next pass leaves it out
                self._active.remove(g)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._active:
                self._active = [g for g in self._active if not g.future.done()]
                batch = self._active[: self.limits.batch]
                if batch:
                    await self._pass(batch)

    async def _pass(self, batch: list[_Generation]) -> None:
        try:
            finished, passes = await self._call(batch)
        except RequestError as err:
            self._fail(batch, err)
            return
        except Exception as exc:  # a model failure fails its generations, never the loop
            for g in batch:
                if not g.future.done():
                    g.future.set_exception(model_failure("generation pass", exc))
            self._drop(batch)
            return
        self.passes += passes
        for g in finished:
            if not g.future.done():
                g.future.set_result(Generated(g.out, g.ms, g.cpu_s))
        self._drop([g for g in batch if g in finished or g.future.done()])

    async def _call(self, batch: list[_Generation]) -> tuple[list[_Generation], int]:
        """Passes over ``batch`` in one model-thread call: (the generations that finished,
        passes run)."""
        lim, thread = self.limits, self.thread

        def work() -> tuple[list[_Generation], int]:
            live, finished, passes = list(batch), [], 0
            while live:
                t0, c0 = time.perf_counter(), time.thread_time()
                logits = self.lm.extend_batch([g.session for g in live], [g.feed() for g in live])
                ms, cpu = (time.perf_counter() - t0) * 1e3, time.thread_time() - c0
                passes += 1
                going = []
                for g, lg in zip(live, logits, strict=True):
                    g.add_pass(ms, cpu / len(live))
                    (finished if g.take(lg[-1]) else going).append(g)
                live = going
                room = len(live) < lim.batch and len(self._active) > len(batch)
                if passes >= lim.passes_per_call or thread.urgent_waiting() or room:
                    break
            return finished, passes

        out, _, _ = await thread.run(work, Priority.GENERATE)
        return out

    def _fail(self, batch: list[_Generation], err: RequestError) -> None:
        for g in batch:
            if not g.future.done():
                g.future.set_exception(RequestError(err.kind, str(err)))
        self._drop(batch)

    def _drop(self, gone: list[_Generation]) -> None:
        if gone:
            ids = {id(g) for g in gone}
            self._active = [g for g in self._active if id(g) not in ids]
