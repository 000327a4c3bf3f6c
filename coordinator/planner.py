"""From the coordinator's snapshot (registry + telemetry) to the cost model's views, and a plan."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from coordinator.costmodel import CloudView, EdgeView, Prediction, Request, candidates
from coordinator.nodes import NodeStatus, Role, Snapshot
from node_runtime.telemetry import Reading


def per_token_acceptance(accepted: int, rounds: int, full_rounds: int) -> float | None:
    """Kept drafts / draft positions reached: a round stops at its first rejection."""
    reached = accepted + rounds - full_rounds
    return accepted / reached if reached > 0 else None


def cloud_view(status: NodeStatus, reading: Reading | None) -> CloudView:
    """A cloud's measured costs: telemetry when there is some, the heartbeat's load otherwise."""
    model = status.info.models[0].name if status.info.models else ""
    base = CloudView(
        status.info.node_id,
        busy_fraction=status.load.busy_fraction,
        queue_depth=status.load.queue_depth,
        model=model,
    )
    if reading is None:
        return base
    x = reading.extra
    return CloudView(
        status.info.node_id,
        target_ms_per_token=x.get("target_ms_per_token", base.target_ms_per_token),
        verify_base_ms=x.get("verify_base_ms", base.verify_base_ms),
        verify_per_token_ms=x.get("verify_per_token_ms", base.verify_per_token_ms),
        busy_fraction=reading.busy_fraction,
        queue_depth=reading.queue_depth,
        model=model,
    )


def edge_view(edge_id: str, reading: Reading | None) -> EdgeView:
    """An edge's draft cost, RTT to each cloud and acceptance per target model."""
    if reading is None:
        return EdgeView(edge_id)
    acceptance: dict[str, float] = {}
    for (_, target), st in reading.acceptance.items():
        a = per_token_acceptance(st.accepted, st.rounds, st.full_rounds)
        if a is not None:
            acceptance[target] = a
    return EdgeView(
        edge_id,
        draft_ms_per_token=reading.extra.get("draft_ms_per_token", EdgeView.draft_ms_per_token),
        rtt_ms=dict(reading.rtt_ms),
        acceptance=acceptance,
    )


def make_plan(
    snapshot: Snapshot,
    readings: Mapping[str, Reading],
    edge_id: str,
    request: Request,
    model: str = "",
) -> tuple[list[Prediction], Sequence[NodeStatus]]:
    """Every admissible prediction for ``edge_id``, best first, and the clouds considered."""
    clouds = [s for s in snapshot.nodes if s.info.role is Role.CLOUD and s.info.serves(model)]
    views = [cloud_view(s, readings.get(s.info.node_id)) for s in clouds]
    return candidates(edge_view(edge_id, readings.get(edge_id)), views, request), clouds
