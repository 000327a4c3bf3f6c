"""From the coordinator's snapshot (registry + telemetry) to the cost model's views, and a plan.

A node that registers with a device profile (``NodeInfo.device`` names one in
``node_runtime.profiles``) is planned with that profile's costs until its telemetry measures
them; a measured figure always wins over the profile, and the profile over the shared priors.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

from coordinator.costmodel import CloudView, EdgeView, Prediction, Request, candidates
from coordinator.nodes import NodeStatus, Role, Snapshot
from models.metrics import per_token_acceptance
from node_runtime.profiles import PROFILES, CallKind, Profile, cost_ms, draft_ms_per_token
from node_runtime.telemetry import Reading

# Tokens already cached per sequence when a profile prices a call: a typical prompt plus some
# output. At the profiles' sizes the KV cache of this many tokens is a small part of a step.
PROFILE_CONTEXT_TOKENS = 512
# Draft lengths a profile's verify cost is tabled for (longer ones use the fit through them).
PROFILE_MAX_K = 16


def cost_figure(extra: Mapping[str, float], name: str, default: float) -> float:
    """A measured cost from a reading's extras; ``default`` when it is absent or not a cost.

    Telemetry is data from the network: a negative or non-finite duration would make the plan
    predict negative time (and win every comparison), so it counts as no measurement.
    """
    value = extra.get(name)
    if value is None or not math.isfinite(value) or value < 0:
        return default
    return float(value)


def device_profile(device: str) -> Profile | None:
    """The profile a node's ``device`` names; None for a plain device ("cpu", "", unknown)."""
    return PROFILES.get(device)


def profile_cloud(
    node_id: str, profile: Profile, batch: int, context: int = PROFILE_CONTEXT_TOKENS
) -> CloudView:
    """A cloud's costs as its profile prices them, with ``batch`` sequences sharing each pass:
    decode ms per token, and the verify pass of k drafts (k + 1 tokens a sequence) for every k.
    The linear fit passes through k = 1 and k = 8, for draft lengths past the table."""
    batch = max(batch, 1)
    by_k = {
        k: cost_ms(profile, CallKind.VERIFY, batch, k + 1, context)
        for k in range(1, PROFILE_MAX_K + 1)
    }
    slope = max((by_k[8] - by_k[1]) / 7, 0.0)
    return CloudView(
        node_id,
        target_ms_per_token=cost_ms(profile, CallKind.DECODE, batch, 1, context),
        verify_base_ms=max(by_k[1] - 2 * slope, 0.0),
        verify_per_token_ms=slope,
        verify_by_k=by_k,
        batch=batch,
    )


def cloud_view(status: NodeStatus, reading: Reading | None) -> CloudView:
    """A cloud's costs: measured in telemetry, else its device profile's, else the priors.

    The profile is priced at the batch the cloud serves now (its active sessions). Once the
    cloud measures its verify pass, the measured line replaces the profile's whole table.
    """
    info = status.info
    model = info.models[0].name if info.models else ""
    profile = device_profile(info.device)
    prior = (
        profile_cloud(info.node_id, profile, status.load.active_sessions)
        if profile is not None
        else CloudView(info.node_id)
    )
    base = dataclasses.replace(
        prior,
        busy_fraction=status.load.busy_fraction,
        queue_depth=status.load.queue_depth,
        model=model,
        tokenizer=info.tokenizer,
    )
    if reading is None:
        return base
    x = reading.extra
    if _measured(x, "verify_base_ms") and _measured(x, "verify_per_token_ms"):
        # measured passes are one sequence's: what the profile still prices, price at batch 1
        base = profile_cloud(info.node_id, profile, 1) if profile is not None else prior
        base = dataclasses.replace(base, verify_by_k={}, batch=1)
    return CloudView(
        info.node_id,
        target_ms_per_token=cost_figure(x, "target_ms_per_token", base.target_ms_per_token),
        verify_base_ms=cost_figure(x, "verify_base_ms", base.verify_base_ms),
        verify_per_token_ms=cost_figure(x, "verify_per_token_ms", base.verify_per_token_ms),
        busy_fraction=reading.busy_fraction,
        queue_depth=reading.queue_depth,
        model=model,
        tokenizer=info.tokenizer,
        verify_by_k=base.verify_by_k,
        batch=base.batch,
    )


def _measured(extra: Mapping[str, float], name: str) -> bool:
    return cost_figure(extra, name, -1.0) >= 0


def edge_view(
    edge_id: str, reading: Reading | None, tokenizer: str = "", device: str = ""
) -> EdgeView:
    """An edge's draft cost (measured, else its device profile's, else the prior), RTT to each
    cloud, acceptance per target model and tokenizer."""
    profile = device_profile(device)
    draft = (
        draft_ms_per_token(profile, PROFILE_CONTEXT_TOKENS)
        if profile is not None
        else EdgeView.draft_ms_per_token
    )
    if reading is None:
        return EdgeView(edge_id, draft_ms_per_token=draft, tokenizer=tokenizer)
    acceptance: dict[str, float] = {}
    for (_, target), st in reading.acceptance.items():
        a = per_token_acceptance(st.accepted, st.rounds, st.full_rounds)
        if a is not None:
            acceptance[target] = a
    return EdgeView(
        edge_id,
        draft_ms_per_token=cost_figure(reading.extra, "draft_ms_per_token", draft),
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
    The edge's device profile is the one it registered with, when it is registered.
    """
    clouds = [s for s in snapshot.nodes if s.info.role is Role.CLOUD and s.info.serves(model)]
    views = [cloud_view(s, readings.get(s.info.node_id)) for s in clouds]
    own = next((s for s in snapshot.nodes if s.info.node_id == edge_id), None)
    device = own.info.device if own is not None and own.info.role is Role.EDGE else ""
    edge = edge_view(edge_id, readings.get(edge_id), tokenizer, device)
    return candidates(edge, views, request), clouds
