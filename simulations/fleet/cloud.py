"""A simulated cloud node: the live cloud's iteration loop, one SimPy timeout per forward pass.

As ``cloud_node.iterations``: each pass takes the verify rounds waiting (up to ``max_batch``)
and one decode step of every active generation (up to ``generate_batch``; a generation's first
pass feeds its prompt), and costs what the cloud's device profile prices that very pass
(``node_runtime.emulation.call_ms``, the function the live node pads its real passes to). A
round or a generation is a SimPy event the edge waits on, so a pass is one event however many
tokens it carries, and a generation's tokens are counted, not simulated one by one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import simpy

from node_runtime.emulation import call_ms
from node_runtime.profiles import Profile

CostFn = Callable[[Sequence[int], Sequence[int]], float]  # (contexts, feeds) -> pass ms


class CloudLost(Exception):
    """The cloud a round or a generation waited on is gone."""


def profile_cost(profile: Profile, call_overhead_ms: float = 0.0) -> CostFn:
    """The pass cost of ``profile``: its roofline for the very contexts and feeds, plus the
    host's own time per call (calibrated; 0 for an ideal host)."""

    def cost(contexts: Sequence[int], feeds: Sequence[int]) -> float:
        return call_ms(profile, contexts, feeds) + call_overhead_ms

    return cost


@dataclass(eq=False)
class _Work:
    """A round (one pass) or a generation (``left`` passes) waiting for the cloud."""

    context: int  # tokens cached before its next feed
    feed: int  # tokens its next pass feeds
    left: int  # passes still to run (1 for a round)
    event: simpy.Event  # succeeds when done; fails with CloudLost
    copies: int = 1  # sequences alike (PRM candidates scored in one pass)


class SimCloud:
    """One cloud node's model loop."""

    def __init__(
        self,
        env: simpy.Environment,
        name: str,
        cost: CostFn,
        max_batch: int = 32,
        generate_batch: int = 32,
    ) -> None:
        self.env, self.name, self.cost = env, name, cost
        self.max_batch, self.generate_batch = max_batch, generate_batch
        self.alive = True
        self.lost_at = float("inf")  # when the node was lost
        self.rounds: deque[_Work] = deque()  # verify rounds waiting
        self.waiting_gens: deque[_Work] = deque()  # generations not admitted yet
        self.gens: list[_Work] = []  # generations in the batch
        self.sessions = 0  # open speculation sessions (for the coordinator's load)
        self.busy_s = 0.0  # device seconds of every pass
        self.passes = 0
        self.verify_passes = 0
        self.rounds_served = 0
        self.tokens_fed = 0
        self.generated = 0
        self._serving: list[_Work] = []
        self._wake: simpy.Event | None = None
        self._busy_mark = 0.0  # busy_s at the last load report
        env.process(self._run())

    # ------------------------------------------------------------------ what edges call
    def verify(self, context: int, feed: int, copies: int = 1) -> simpy.Event:
        """Queue a verify (or scoring) pass feeding ``feed`` tokens after ``context`` for
        ``copies`` alike sequences; its event succeeds when the pass that served it ends."""
        return self._add(self.rounds, _Work(context, feed, 1, self.env.event(), copies))

    def generate(self, context: int, feed: int, new_tokens: int) -> simpy.Event:
        """Queue a generation of ``new_tokens``: its first pass feeds ``feed`` tokens after
        ``context`` cached ones (a prompt into an empty cache: context 0, feed the prompt)."""
        return self._add(self.waiting_gens, _Work(context, feed, new_tokens, self.env.event()))

    def _add(self, queue: deque[_Work], w: _Work) -> simpy.Event:
        if not self.alive:
            w.event.fail(CloudLost(self.name))
            return w.event
        queue.append(w)
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()
        return w.event

    # ------------------------------------------------------------------ the coordinator's view
    @property
    def queue_depth(self) -> int:
        """Rounds and generations waiting for a place in a pass."""
        return len(self.rounds) + len(self.waiting_gens)

    @property
    def active(self) -> int:
        """Sessions and generations the node holds."""
        return self.sessions + len(self.gens) + len(self.waiting_gens)

    def busy_since_last(self, window_s: float) -> float:
        """Share of the last ``window_s`` its device was busy (read once per heartbeat)."""
        busy = self.busy_s - self._busy_mark
        self._busy_mark = self.busy_s
        return min(busy / window_s, 1.0) if window_s > 0 else 0.0

    def fail(self) -> None:
        """Lose the node: everything waiting or in a pass fails with CloudLost."""
        self.alive = False
        for w in [*self.rounds, *self.waiting_gens, *self.gens, *self._serving]:
            if not w.event.triggered:
                w.event.fail(CloudLost(self.name))
        self.rounds.clear()
        self.waiting_gens.clear()
        self.gens.clear()
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()

    # ------------------------------------------------------------------ the loop
    def _run(self) -> simpy.events.ProcessGenerator:
        env = self.env
        while self.alive:
            while self.waiting_gens and len(self.gens) < self.generate_batch:
                self.gens.append(self.waiting_gens.popleft())
            if not self.rounds and not self.gens:
                self._wake = env.event()
                yield self._wake
                self._wake = None
                continue
            take = min(len(self.rounds), self.max_batch)
            rounds = [self.rounds.popleft() for _ in range(take)]
            members = rounds + self.gens
            self._serving = rounds
            contexts = [w.context for w in members for _ in range(w.copies)]
            feeds = [w.feed for w in members for _ in range(w.copies)]
            ms = self.cost(contexts, feeds)
            yield env.timeout(ms / 1e3)
            self._serving = []
            if not self.alive:
                return
            self.busy_s += ms / 1e3
            self.passes += 1
            self.tokens_fed += sum(feeds)
            if rounds:
                self.verify_passes += 1
                self.rounds_served += len(rounds)
            for w in rounds:
                w.event.succeed()
            going: list[_Work] = []
            for g in self.gens:
                g.context += g.feed
                g.feed, g.left = 1, g.left - 1
                self.generated += 1
                if g.left <= 0:
                    g.event.succeed()
                else:
                    going.append(g)
            self.gens = going
