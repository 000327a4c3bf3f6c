"""The edge node's Prometheus metrics: what each request adds, and gauges read at scrape time."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edge_node.speculation import SpecResult
from node_runtime.kinds import Mode
from node_runtime.metrics import GenerationFigures, NodeMetrics

if TYPE_CHECKING:
    from edge_node.service import EdgeServicer


def solve_figures(result: SpecResult, drafter: str, target: str, prompt: int) -> GenerationFigures:
    """One finished Solve request as metric figures."""
    a = result.account
    return GenerationFigures(
        kind="solve",
        mode=Mode(result.final_mode).value,
        generated=a.generated_tokens,
        drafted=a.drafted_tokens,
        accepted=a.accepted_tokens,
        rounds=a.verify_rounds,
        prompt=prompt,
        wall_s=a.wall_s,
        ttft_s=a.ttft_s,
        drafter=drafter,
        target=target,
        peer=result.cloud_node,
        bytes_sent=a.bytes_sent,
        bytes_received=a.bytes_received,
    )


def instrument(metrics: NodeMetrics, servicer: EdgeServicer) -> None:
    """Gauges and counters the servicer already keeps, read at every scrape."""
    metrics.watch("tandem_active_requests", "Requests in progress", lambda: float(servicer.active))
    metrics.watch(
        "tandem_queue_depth",
        "Requests waiting or running on this node (the edge queues nothing beyond admission)",
        lambda: float(servicer.active),
    )
    metrics.watch(
        "tandem_link_rtt_seconds",
        "Measured round trip to each cloud node (EWMA)",
        lambda: {(peer,): ms / 1e3 for peer, ms in servicer.clouds.rtt_ms.items()},
        labels=("peer",),
    )
    metrics.watch(
        "tandem_draft_seconds_per_token",
        "The drafter's time per drafted token (EWMA)",
        lambda: (servicer.stats.draft_ms or 0.0) / 1e3,
    )
    metrics.watch(
        "tandem_rejected_requests",
        "Requests refused with an error status",
        lambda: servicer.stats.counts["rejected"],
        kind="counter",
    )
    metrics.watch(
        "tandem_degraded_requests",
        "Requests that lost their cloud and finished on the edge",
        lambda: servicer.stats.counts["degraded"],
        kind="counter",
    )
