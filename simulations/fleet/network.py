"""Message delays over a link profile, and the device costs of the edge, from the shared tables.

A message's one-way delay is what the link emulator gives a lone message: the profile's latency,
a uniform jitter on [0, 2 x jitter], and its bytes at the profile's bandwidth; plus the host's
software time per message (calibrated; 0 for an ideal host). Resets are the profile's loss: a
Poisson rate per second of connection life.
"""

from __future__ import annotations

import math
import random
from dataclasses import replace

from node_runtime.emulation import call_ms
from node_runtime.profiles import CallKind, Profile, cost_ms
from simulations.link.profiles import get_profile as get_link
from simulations.link.spec import DirectionSpec

# Bytes on the wire, roughly (protobuf varints and framing): what the bandwidth term prices.
HEADER_BYTES = 40  # per message: ids, positions, framing
TOKEN_BYTES = 4  # per token id
TEXT_BYTES_PER_TOKEN = 4  # step modes send text


class Link:
    """One edge's path to the clouds: both directions of a link profile."""

    def __init__(
        self, name: str, overhead_ms: float = 0.0, resets: bool = True, rtt_ms: float = -1.0
    ) -> None:
        spec = get_link(name).spec
        self.name = name
        self.up: DirectionSpec = spec.uplink
        self.down: DirectionSpec = spec.downlink
        if rtt_ms >= 0:  # keep jitter and bandwidth, move the latency floor
            self.up = replace(self.up, latency_ms=max(rtt_ms / 2 - self.up.jitter_ms, 0.0))
            self.down = replace(self.down, latency_ms=max(rtt_ms / 2 - self.down.jitter_ms, 0.0))
        self.overhead_ms = overhead_ms
        rate = (self.up.resets_per_s + self.down.resets_per_s) if resets else 0.0
        self.resets_per_s = rate

    def _delay(self, d: DirectionSpec, rng: random.Random, tokens: int) -> float:
        jitter = rng.uniform(0.0, 2 * d.jitter_ms) if d.jitter_ms else 0.0
        nbytes = HEADER_BYTES + TOKEN_BYTES * tokens
        return d.latency_ms + jitter + d.serialization_ms(nbytes) + self.overhead_ms

    def up_ms(self, rng: random.Random, tokens: int = 0) -> float:
        """One message edge -> cloud carrying ``tokens`` token ids."""
        return self._delay(self.up, rng, tokens)

    def down_ms(self, rng: random.Random, tokens: int = 0) -> float:
        """One message cloud -> edge."""
        return self._delay(self.down, rng, tokens)

    @property
    def rtt_ms(self) -> float:
        """Mean round trip of small messages (what an RTT probe measures)."""
        return self.up.mean_delay_ms + self.down.mean_delay_ms + 2 * self.overhead_ms

    def reset_during(self, rng: random.Random, seconds: float) -> bool:
        """Whether the connection resets within ``seconds`` of its life."""
        if self.resets_per_s <= 0 or seconds <= 0:
            return False
        return rng.random() < -math.expm1(-self.resets_per_s * seconds)


class EdgeCost:
    """What the edge's drafter costs on its device profile (plus the host's time per call)."""

    def __init__(self, profile: Profile, call_overhead_ms: float = 0.0) -> None:
        self.profile = profile
        self.overhead = call_overhead_ms

    def draft_ms(self, context: int, pending: int, k: int) -> float:
        """A round's k drafts: the first call feeds the ``pending`` tokens the drafter's cache
        lacks (the whole prompt on a first round), the other k - 1 feed one token each. The
        roofline is linear in the context within a regime, so the k - 1 single-token calls are
        priced at their mean context."""
        first = call_ms(self.profile, [context], [pending]) + self.overhead
        if k <= 1:
            return first
        mean_ctx = context + pending + (k - 2) / 2
        one = cost_ms(self.profile, CallKind.DRAFT, 1, 1, mean_ctx)
        return first + (k - 1) * (one + self.overhead)

    def decode_ms(self, prompt: int, n: int) -> float:
        """The drafter alone: the prompt's prefill, then n - 1 single-token calls."""
        return self.draft_ms(0, prompt, n)

    def candidates_ms(self, context: int, candidates: int, tokens: int) -> float:
        """``candidates`` sequences drafted in a batch, ``tokens`` steps each (PRM search)."""
        mean_ctx = context + (tokens - 1) / 2
        step = cost_ms(self.profile, CallKind.DECODE, candidates, 1, mean_ctx) + self.overhead
        return tokens * step
