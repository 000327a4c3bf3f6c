"""From the coordinator's snapshot (registry + telemetry) to the cost model's views, and a plan."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from coordinator.costmodel import CloudView, EdgeView, Prediction, Request, candidates
from coordinator.nodes import NodeStatus, Role, Snapshot
from models.metrics import per_token_acceptance
from node_runtime.telemetry import Reading


def cost_figure(extra: Mapping[str, float], name: str, default: float) -> float:
    """A measured cost from a reading's extras; ``default`` when it is absent or not a cost.

    Telemetry is data from the network: a negative or non-finite duration would make the plan
    predict negative time (and win every comparison), so it counts as no measurement.
    """
    value = extra.get(name)
    if value is None or not math.isfinite(value) or value < 0:
        return default
    return float(value)


def cloud_view(status: NodeStatus, reading: Reading | None) -> CloudView:
    """A cloud's measured costs: telemetry when there is some, the heartbeat's load otherwise."""
    model = status.info.models[0].name if status.info.models else ""
    base = CloudView(
        status.info.node_id,
        busy_fraction=status.load.busy_fraction,
        queue_depth=status.load.queue_depth,
        model=model,
        tokenizer=status.info.tokenizer,
    )
    if reading is None:
        return base
    x = reading.extra
    return CloudView(
        status.info.node_id,
        target_ms_per_token=cost_figure(x, "target_ms_per_token", base.target_ms_per_token),
        verify_base_ms=cost_figure(x, "verify_base_ms", base.verify_base_ms),
        verify_per_token_ms=cost_figure(x, "verify_per_token_ms", base.verify_per_token_ms),
        busy_fraction=reading.busy_fraction,
        queue_depth=reading.queue_depth,
        model=model,
        tokenizer=status.info.tokenizer,
    )


def edge_view(edge_id: str, reading: Reading | None, tokenizer: str = "") -> EdgeView:
    """An edge's draft cost, RTT to each cloud, acceptance per target model and tokenizer."""
    if reading is None:
        return EdgeView(edge_id, tokenizer=tokenizer)
    acceptance: dict[str, float] = {}
    for (_, target), st in reading.acceptance.items():
        a = per_token_acceptance(st.accepted, st.rounds, st.full_rounds)
        if a is not None:
            acceptance[target] = a
    return EdgeView(
        edge_id,
        draft_ms_per_token=cost_figure(
            reading.extra, "draft_ms_per_token", EdgeView.draft_ms_per_token
        ),
        rtt_ms=dict(reading.rtt_ms),
        acceptance=acceptance,
        tokenizer=tokenizer,
    )


def make_plan(
    snapshot: Snapshot,
    readings: Mapping[str, Reading],
    edge_id: str,
    request: Request,
    model: str = "",
    tokenizer: str = "",
) -> tuple[list[Prediction], Sequence[NodeStatus]]:
    """Every admissible prediction for ``edge_id``, best first, and the clouds considered.

    ``tokenizer`` is the edge's fingerprint: token speculation only on clouds with the same.
    """
    clouds = [s for s in snapshot.nodes if s.info.role is Role.CLOUD and s.info.serves(model)]
    views = [cloud_view(s, readings.get(s.info.node_id)) for s in clouds]
    edge = edge_view(edge_id, readings.get(edge_id), tokenizer)
    return candidates(edge, views, request), clouds
