"""The coordinator's telemetry intake: one subscriber following every registered node.

Registration decides whom to follow: a node's ``telemetry_address`` is connected when it registers
and disconnected when it deregisters, expires or is replaced. Samples are served only for
registered node ids with the registered role, since one SUB socket cannot tell which peer sent a
frame and a sample names its node itself. No gRPC here: the service calls the sync hooks from its
handlers, and simulations or tests drive the object directly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from coordinator.nodes import NodeInfo, Role
from node_runtime.serving import log_event
from node_runtime.telemetry import (
    AcceptanceStats,
    Context,
    Pair,
    Sample,
    SubscriberConfig,
    TelemetrySubscriber,
    TransportError,
)

log = logging.getLogger("coordinator.telemetry")


@dataclass(frozen=True)
class IntakeConfig:
    """How the coordinator takes in telemetry."""

    # Socket limits, reconnect and heartbeat settings of the subscriber.
    subscriber: SubscriberConfig = field(default_factory=SubscriberConfig)
    # latest() and rtt() ignore samples older than this: a stalled publisher must not steer
    # scheduling with old load numbers. Five publish periods by default.
    max_age_s: float = 5.0

    def __post_init__(self) -> None:
        if not self.max_age_s > 0:
            raise ValueError(f"max_age_s must be > 0, got {self.max_age_s}")


@dataclass(frozen=True)
class _Followed:
    role: Role
    endpoint: str  # normalized, as connected; "" when the node publishes none


def _endpoint(address: str) -> str:
    return address if not address or "://" in address else f"tcp://{address}"


class TelemetryIntake:
    """Follows registered nodes' telemetry and answers the scheduler's questions about it.

    Lifecycle: ``await start()``, then the hooks (``node_registered``, ``node_removed``, ``sync``)
    from the service, queries at any time, ``await stop()`` last. Hooks called before ``start``
    are remembered and applied by it. All methods run on the event loop's thread.
    """

    def __init__(
        self,
        config: IntakeConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        context: Context | None = None,
    ) -> None:
        self.config = config or IntakeConfig()
        self._clock = clock
        self.subscriber = TelemetrySubscriber(self.config.subscriber, clock=clock, context=context)
        self._nodes: dict[str, _Followed] = {}
        self._started = False
        self._connect_errors = 0

    async def start(self) -> None:
        """Open the subscriber and connect every node registered so far."""
        await self.subscriber.start()
        self._started = True
        for node_id, followed in self._nodes.items():
            self._connect(node_id, followed.endpoint)

    async def stop(self) -> None:
        """Close the subscriber; the last samples stay readable."""
        self._started = False
        await self.subscriber.stop()

    def node_registered(self, info: NodeInfo) -> None:
        """Follow ``info.telemetry_address`` (a registration, or a re-registration that may
        move it). Idempotent."""
        new = _Followed(info.role, _endpoint(info.telemetry_address))
        old = self._nodes.get(info.node_id)
        if old == new:
            return
        self._nodes[info.node_id] = new
        if old is not None and old.endpoint != new.endpoint:
            self._release(old.endpoint)
        if self._started:
            self._connect(info.node_id, new.endpoint)

    def node_removed(self, node_id: str) -> None:
        """Stop following a node that deregistered, expired or was replaced; drop its state."""
        old = self._nodes.pop(node_id, None)
        if old is not None:
            self._release(old.endpoint)
        self.subscriber.forget(node_id)

    def sync(self, nodes: Iterable[NodeInfo]) -> None:
        """Reconcile with the registry's live nodes: follow new ones, drop the rest.

        A safety net for a missed hook; also forgets samples from node ids nobody registered.
        """
        live = {info.node_id: info for info in nodes}
        for node_id in [n for n in self._nodes if n not in live]:
            self.node_removed(node_id)
        for info in live.values():
            self.node_registered(info)
        for node_id in self.subscriber.snapshot():
            if node_id not in live:
                self.subscriber.forget(node_id)

    def latest(self, node_id: str) -> Sample | None:
        """The node's latest sample, or None: unregistered, none yet, wrong role, or stale."""
        followed = self._nodes.get(node_id)
        seen = self.subscriber.latest(node_id)
        if followed is None or seen is None or seen.sample.role != followed.role.value:
            return None
        if self._clock() - seen.received_at > self.config.max_age_s:
            return None
        return seen.sample

    def rtt(self, edge_id: str, cloud_id: str) -> float | None:
        """Round trip between an edge and a cloud node in ms: the edge's own measurement, else
        the cloud's of the edge, else None. Fresh samples only."""
        for node, peer in ((edge_id, cloud_id), (cloud_id, edge_id)):
            sample = self.latest(node)
            if sample is not None and peer in sample.reading.rtt_ms:
                return sample.reading.rtt_ms[peer]
        return None

    def acceptance_all(self) -> dict[Pair, AcceptanceStats]:
        """Per (drafter, target) pair, the counters summed over every registered edge.

        Counters are cumulative per publisher epoch, so stale samples still count (their totals
        are still true); a node's share leaves the sum when it leaves the registry.
        """
        out: dict[Pair, AcceptanceStats] = {}
        for node_id, followed in self._nodes.items():
            seen = self.subscriber.latest(node_id)
            if followed.role is not Role.EDGE or seen is None or seen.sample.role != "edge":
                continue
            for pair, stats in seen.sample.reading.acceptance.items():
                out[pair] = out.get(pair, AcceptanceStats()) + stats
        return out

    def acceptance(self, drafter: str, target: str) -> AcceptanceStats:
        """The (drafter, target) counters summed over every registered edge (zeros when none)."""
        return self.acceptance_all().get((drafter, target), AcceptanceStats())

    def stats(self) -> dict[str, float]:
        """Subscriber totals (samples, gaps, restarts, malformed, ...) and node counts, every key
        prefixed ``telemetry_`` so the service can merge them into its metrics."""
        now = self._clock()
        fresh = sum(
            1
            for node_id in self._nodes
            if (seen := self.subscriber.latest(node_id)) is not None
            and now - seen.received_at <= self.config.max_age_s
        )
        out = {f"telemetry_{key}": value for key, value in self.subscriber.stats().items()}
        out.update(
            telemetry_nodes=float(len(self._nodes)),
            telemetry_nodes_fresh=float(fresh),
            telemetry_connect_errors_total=float(self._connect_errors),
        )
        return out

    def _connect(self, node_id: str, endpoint: str) -> None:
        if not endpoint:
            return  # the node publishes no telemetry
        try:
            self.subscriber.connect(endpoint)
        except TransportError as err:  # a bad address in one registration must not stop intake
            self._connect_errors += 1
            log_event(
                log,
                "telemetry_connect_failed",
                logging.WARNING,
                node_id=node_id,
                endpoint=endpoint,
                error=str(err),
            )

    def _release(self, endpoint: str) -> None:
        # Several node ids may share one publisher endpoint; disconnect when the last one goes.
        if endpoint and self._started and all(f.endpoint != endpoint for f in self._nodes.values()):
            self.subscriber.disconnect(endpoint)
