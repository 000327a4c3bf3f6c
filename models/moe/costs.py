"""The per-miss choice: fetch the weights, compute on the cloud, or wait for a prefetch.

Fiddler makes this choice between CPU and GPU in one box; here it is made across a network:

- fetch:   queue + RTT + expert bytes / bandwidth + device compute (then the expert is resident);
- remote:  RTT + 2 x tokens x d_model x 4 bytes / bandwidth + server compute;
- wait:    the in-flight prefetch's remaining time + device compute (only if one is in flight).

``queue`` is the time the link still needs for expert bytes already on their way (prefetches in
flight): a new expert's bytes wait behind them. Remote compute's few KB do not: HTTP/2 sends the
streams of one connection in interleaved frames, so a small reply overtakes a large transfer.
Ties go to fetching, which also fills the cache.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class MissAction(str, enum.Enum):
    """What a miss does."""

    FETCH = "fetch"  # move the weights to the edge, compute there
    REMOTE = "remote"  # send the activations, the cloud computes, receive the output
    WAIT = "wait"  # a prefetch of this expert is in flight: wait for it


@dataclass(frozen=True)
class LinkModel:
    """The edge's link to its expert store, as the cost model sees it."""

    bandwidth_bytes_s: float  # payload bytes per second
    rtt_s: float  # round trip of a small message

    def transfer_s(self, nbytes: float) -> float:
        return nbytes / self.bandwidth_bytes_s if self.bandwidth_bytes_s > 0 else 0.0


@dataclass(frozen=True)
class MissCosts:
    """Estimated seconds of each option for one miss."""

    fetch_s: float
    remote_s: float
    wait_s: float | None  # None: nothing in flight for this expert

    def best(self, allow_remote: bool = True) -> MissAction:
        options = [(self.fetch_s, 0, MissAction.FETCH)]
        if allow_remote:
            options.append((self.remote_s, 1, MissAction.REMOTE))
        if self.wait_s is not None:
            options.append((self.wait_s, -1, MissAction.WAIT))
        return min(options, key=lambda o: (o[0], o[1]))[2]


def miss_costs(
    link: LinkModel,
    expert_bytes: int,
    tokens: int,
    d_model: int,
    device_compute_s: float,
    server_compute_s: float,
    queued_bytes: int = 0,
    inflight_remaining_s: float | None = None,
    activation_bytes: int = 4,
) -> MissCosts:
    """Costs of one miss for ``tokens`` rows routed to the expert (the tokens in flight)."""
    queue = link.transfer_s(queued_bytes)
    fetch = queue + link.rtt_s + link.transfer_s(expert_bytes) + device_compute_s
    shipped = 2 * tokens * d_model * activation_bytes
    remote = link.rtt_s + link.transfer_s(shipped) + server_compute_s
    wait = (
        None if inflight_remaining_s is None else max(0.0, inflight_remaining_s) + device_compute_s
    )
    return MissCosts(fetch, remote, wait)
