"""Which cloud node an edge should use: pure functions of a measured snapshot.

Every policy has the signature of ``PickPolicy`` and lives in ``POLICIES``, so the live service and
the simulations call the same code, and a later latency cost model is one more entry.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Collection

from coordinator.nodes import NodeInfo, NodeStatus, Role, Snapshot

# (snapshot, edge_id, model, exclude) -> the chosen cloud node, or None when no live one fits.
# model "" means any model; exclude holds node ids the edge has given up on.
PickPolicy = Callable[[Snapshot, str, str, Collection[str]], "NodeInfo | None"]


def candidates(snapshot: Snapshot, model: str, exclude: Collection[str]) -> list[NodeStatus]:
    """Live cloud nodes that serve ``model`` (any when empty) and are not excluded."""
    return [
        status
        for status in snapshot.with_role(Role.CLOUD)
        if status.info.serves(model) and status.info.node_id not in exclude
    ]


def load_key(status: NodeStatus, edge_id: str) -> tuple[bool, int, float, float, int, int]:
    """Sort key, lowest is least loaded.

    Order: saturated nodes (every session slot taken) last, then fewer queued requests (work
    already waiting), then a lower share of session slots in use, then a lower busy fraction.
    Ties break on a stable hash of (edge, node): loads lag by up to a heartbeat, so with a plain
    id tie-break every edge would pile onto the same idle node before the next report.
    """
    load, cap = status.load, status.info.max_sessions
    used = load.active_sessions / cap if cap > 0 else 0.0  # cap 0: the node states no limit
    saturated = cap > 0 and load.active_sessions >= cap
    spread = zlib.crc32(f"{edge_id}/{status.info.node_id}".encode())
    return (saturated, load.queue_depth, used, load.busy_fraction, load.active_sessions, spread)


def least_loaded(
    snapshot: Snapshot, edge_id: str, model: str, exclude: Collection[str]
) -> NodeInfo | None:
    """The live, non-excluded cloud node serving ``model`` with the lowest ``load_key``."""
    fits = candidates(snapshot, model, exclude)
    if not fits:
        return None
    return min(fits, key=lambda status: load_key(status, edge_id)).info


POLICIES: dict[str, PickPolicy] = {"least_loaded": least_loaded}
DEFAULT_POLICY = "least_loaded"


def pick_cloud(
    snapshot: Snapshot,
    edge_id: str,
    model: str = "",
    exclude: Collection[str] = (),
    policy: str = DEFAULT_POLICY,
) -> NodeInfo | None:
    """Choose a cloud node for ``edge_id`` with the named policy; None when no live node fits."""
    try:
        chosen = POLICIES[policy]
    except KeyError:
        raise ValueError(f"unknown pick policy {policy!r}; known: {sorted(POLICIES)}") from None
    return chosen(snapshot, edge_id, model, frozenset(exclude))


def why_none(snapshot: Snapshot, model: str, exclude: Collection[str]) -> str:
    """A human reason for an empty pick, naming what is missing."""
    clouds = snapshot.with_role(Role.CLOUD)
    if not clouds:
        return "no live cloud node is registered"
    serving = [status for status in clouds if status.info.serves(model)]
    if not serving:
        names = sorted({spec.name for status in clouds for spec in status.info.models})
        return f"no live cloud node serves model {model!r} (served: {names})"
    what = f"model {model!r}" if model else "any model"
    return f"all {len(serving)} live cloud node(s) serving {what} are excluded"


def sharing_tokenizer(snapshot: Snapshot, tokenizer: str) -> Snapshot:
    """The snapshot without the cloud nodes whose tokenizer is not ``tokenizer``.

    Token ids cross the wire only between nodes that share a tokenizer; an edge about to send
    them picks from this.
    """
    kept = tuple(
        status
        for status in snapshot.nodes
        if status.info.role is not Role.CLOUD or status.info.shares_tokenizer(tokenizer)
    )
    return Snapshot(taken_at=snapshot.taken_at, nodes=kept)


def tokenizer_mismatch(
    snapshot: Snapshot, model: str, exclude: Collection[str], tokenizer: str
) -> str | None:
    """Why no cloud fits when only tokenizers are in the way, naming both sides; else None."""
    fits = candidates(snapshot, model, exclude)
    if not fits or any(status.info.shares_tokenizer(tokenizer) for status in fits):
        return None
    theirs = ", ".join(
        f"{status.info.node_id} has {status.info.tokenizer or 'none stated'}" for status in fits
    )
    return (
        f"token speculation needs a cloud with the edge's tokenizer {tokenizer}: {theirs}; "
        "cloud-only and step modes carry text and work across tokenizers"
    )
