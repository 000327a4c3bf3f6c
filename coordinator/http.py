"""The coordinator's HTTP side: the cluster's OpenAI-compatible front door and its /metrics.

The API reaches the cluster through the job API (``Coordinator.Submit`` on this very server), as
any client would. Metrics are read at scrape time from what the coordinator already keeps: the
registry, the scheduler's counters, and the latest telemetry of every node, which is where the
cluster-wide figures live (acceptance per (drafter, target) pair, RTT per link, queue depths).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from node_runtime.metrics import MetricsServer, NodeMetrics, Values
from node_runtime.openai_api.backend import JobBackend
from node_runtime.openai_api.server import ApiServer

if TYPE_CHECKING:
    from coordinator.service import CoordinatorServer, CoordinatorServicer


def instrument(metrics: NodeMetrics, servicer: CoordinatorServicer) -> None:
    """The coordinator's counters and the nodes' latest telemetry, read at every scrape."""

    def nodes() -> Values:
        snap = servicer.registry.snapshot().nodes
        roles = {s.info.role.value for s in snap} | {"edge", "cloud"}
        return {(r,): float(sum(1 for s in snap if s.info.role.value == r)) for r in roles}

    def counter(name: str) -> float:
        return float(servicer.metrics().get(name, 0.0))

    def per_node(field: str) -> Values:
        return {(n,): float(getattr(r, field)) for n, r in servicer.readings().items()}

    def pairs(field: str) -> Values:
        out: dict[tuple[str, ...], float] = {}
        for node, reading in servicer.readings().items():
            for (drafter, target), stats in reading.acceptance.items():
                value = getattr(stats, field)
                out[(node, drafter, target)] = float(value)
        return out

    def rtts() -> Values:
        return {
            (node, peer): ms / 1e3
            for node, reading in servicer.readings().items()
            for peer, ms in reading.rtt_ms.items()
        }

    m = metrics
    m.watch("tandem_nodes", "Live registered nodes by role", nodes, labels=("role",))
    for name, help in (
        ("registrations_total", "Node registrations"),
        ("expirations_total", "Nodes dropped after missed heartbeats"),
        ("jobs_total", "Jobs submitted through the job API"),
        ("plans_total", "Plans made for edges"),
        ("plans_unavailable_total", "Plan requests nothing admissible could serve"),
        ("picks_total", "Cloud picks"),
        ("telemetry_gaps_total", "Telemetry samples lost in transit (sequence gaps)"),
    ):
        m.watch(
            f"tandem_coordinator_{name.removesuffix('_total')}",
            help,
            lambda n=name: counter(n),
            kind="counter",
        )
    m.watch(
        "tandem_node_queue_depth",
        "Each node's queue depth (telemetry)",
        lambda: per_node("queue_depth"),
        labels=("node",),
    )
    m.watch(
        "tandem_node_active_sessions",
        "Each node's active sessions or requests (telemetry)",
        lambda: per_node("active_sessions"),
        labels=("node",),
    )
    m.watch(
        "tandem_node_busy_ratio",
        "Each node's busy fraction (telemetry)",
        lambda: per_node("busy_fraction"),
        labels=("node",),
    )
    m.watch(
        "tandem_node_pair_drafted_tokens",
        "Drafted tokens by edge and (drafter, target) pair (telemetry, cumulative)",
        lambda: pairs("drafted"),
        kind="counter",
        labels=("node", "drafter", "target"),
    )
    m.watch(
        "tandem_node_pair_accepted_tokens",
        "Accepted draft tokens by edge and (drafter, target) pair (telemetry, cumulative)",
        lambda: pairs("accepted"),
        kind="counter",
        labels=("node", "drafter", "target"),
    )
    m.watch(
        "tandem_node_pair_acceptance_ratio",
        "Accepted / drafted tokens by edge and (drafter, target) pair (telemetry)",
        lambda: pairs("acceptance_rate"),
        labels=("node", "drafter", "target"),
    )
    m.watch(
        "tandem_link_rtt_seconds",
        "Round trip of each (node, peer) link (telemetry)",
        rtts,
        labels=("node", "peer"),
    )


class CoordinatorHttp:
    """The running HTTP side: the API (with /metrics) or /metrics alone."""

    def __init__(self, server: ApiServer | MetricsServer) -> None:
        self.server = server

    @property
    def address(self) -> str:
        """Where it listens."""
        return self.server.address

    async def stop(self) -> None:
        """Stop listening."""
        await self.server.stop()


async def start_http(coordinator: CoordinatorServer, address: str) -> CoordinatorHttp | None:
    """Serve the API and /metrics when ``config.api.port`` is set (>= 0); None otherwise."""
    config = coordinator.servicer.config.api
    if config.port < 0:
        return None
    metrics = NodeMetrics("coordinator", address)
    instrument(metrics, coordinator.servicer)
    server = ApiServer(JobBackend(address), config, metrics)
    await server.start()
    return CoordinatorHttp(server)
