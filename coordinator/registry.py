"""The registry of live nodes: pure state over an injected clock.

No I/O and no wall clock: time comes from ``clock`` and expirations are reported through
``on_expire``, so tests drive it with a fake clock and the service decides how to log.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from coordinator.nodes import NodeInfo, NodeLoad, NodeStatus, Role, Snapshot
from node_runtime.openai_api.settings import ApiConfig


@dataclass(frozen=True)
class CoordinatorConfig:
    """Everything the coordinator's behaviour depends on; the CLI only builds it."""

    host: str = "127.0.0.1"  # address the gRPC server binds
    port: int = 0  # gRPC port; 0 picks a free one
    # How often nodes heartbeat; told to every node in RegisterReply so both sides agree.
    heartbeat_interval_s: float = 1.0
    # A node silent for this many intervals is removed: one lost heartbeat is not a dead node.
    missed_heartbeats: int = 3
    # Registry capacity: registering past it answers RESOURCE_EXHAUSTED instead of growing forever.
    max_nodes: int = 1024
    # How often the counters are logged; there is no Metrics RPC on the Coordinator service.
    metrics_log_interval_s: float = 30.0
    # Grace period for in-flight RPCs when the server stops.
    stop_grace_s: float = 1.0
    # The cluster's OpenAI-compatible front door and /metrics (HTTP); port -1: not served.
    api: ApiConfig = dataclasses.field(default_factory=ApiConfig)

    def __post_init__(self) -> None:
        if not self.heartbeat_interval_s > 0:
            raise ValueError(f"heartbeat_interval_s must be > 0, got {self.heartbeat_interval_s}")
        if self.missed_heartbeats < 1:
            raise ValueError(f"missed_heartbeats must be >= 1, got {self.missed_heartbeats}")
        if self.max_nodes < 1:
            raise ValueError(f"max_nodes must be >= 1, got {self.max_nodes}")
        if not self.metrics_log_interval_s > 0:
            raise ValueError(
                f"metrics_log_interval_s must be > 0, got {self.metrics_log_interval_s}"
            )
        if self.stop_grace_s < 0:
            raise ValueError(f"stop_grace_s must be >= 0, got {self.stop_grace_s}")

    @property
    def expiry_s(self) -> float:
        """Silence after which a node is out."""
        return self.heartbeat_interval_s * self.missed_heartbeats


class NotOwner(PermissionError):
    """The node id (or its address) belongs to a registration made from another certificate."""


class RegistryFull(Exception):
    """Registering one more node would exceed ``CoordinatorConfig.max_nodes``."""


@dataclass(frozen=True)
class Registration:
    """The outcome of a register call."""

    node: NodeInfo  # as stored, with its node_id
    new: bool  # False: a known id registered again and its info was updated
    replaced: tuple[NodeInfo, ...]  # other entries dropped because they claimed the same address


def _random_id(role: Role) -> str:
    # Random, not a counter: a restarted coordinator must never hand out an id that a live node
    # from before the restart still uses and is about to re-register with.
    return f"{role.value}-{uuid.uuid4().hex[:12]}"


class Registry:
    """Registered nodes, their latest load and liveness.

    Every public method first expires nodes silent for longer than ``config.expiry_s``, so the
    answer is always about live nodes, whether or not a background sweep ran recently.
    """

    def __init__(
        self,
        config: CoordinatorConfig,
        clock: Callable[[], float] = time.monotonic,
        on_expire: Callable[[NodeStatus], None] | None = None,
        new_id: Callable[[Role], str] = _random_id,
    ) -> None:
        self._config = config
        self._clock = clock
        self._on_expire = on_expire
        self._new_id = new_id
        self._nodes: dict[str, NodeStatus] = {}
        # node id -> fingerprint of the certificate it registered from ("": plaintext, unbound)
        self._owners: dict[str, str] = {}
        self._counts: dict[str, int] = dict.fromkeys(
            (
                "registrations",
                "reregistrations",
                "replacements",
                "rejected_full",
                "heartbeats",
                "unknown_heartbeats",
                "deregistrations",
                "expirations",
                "refused_not_owner",
            ),
            0,
        )

    def register(self, info: NodeInfo, owner: str = "") -> Registration:
        """Add a node, or update it when its id is known; assigns an id when ``info`` has none.

        A node id the registry does not know is accepted as given: that is how nodes keep their
        ids across a coordinator restart. Another entry with the same address is dropped, since
        only one server can listen there (a node that restarted and lost its id).
        Raises ``RegistryFull`` when the node is new and the registry is at ``max_nodes``.
        ``owner`` (a certificate fingerprint) binds the id: while it is registered, another owner
        can neither register it again nor replace it by its address (``NotOwner``).
        """
        now = self._clock()
        self.expire()
        node_id = info.node_id or self._unused_id(info.role)
        known = self._nodes.get(node_id)
        replaced = tuple(
            status.info
            for other_id, status in self._nodes.items()
            if other_id != node_id and status.info.address == info.address
        )
        self._check_owner(node_id, owner)
        for gone in replaced:
            self._check_owner(gone.node_id, owner, f"address {info.address} of ")
        if known is None and len(self._nodes) - len(replaced) >= self._config.max_nodes:
            self._counts["rejected_full"] += 1
            raise RegistryFull(f"registry holds max_nodes={self._config.max_nodes} nodes")
        for gone in replaced:
            del self._nodes[gone.node_id]
            self._owners.pop(gone.node_id, None)
        self._owners[node_id] = owner
        stored = dataclasses.replace(info, node_id=node_id)
        self._nodes[node_id] = NodeStatus(
            info=stored,
            load=known.load if known else NodeLoad(),
            last_seen=now,
            registered_at=known.registered_at if known else now,
        )
        self._counts["reregistrations" if known else "registrations"] += 1
        self._counts["replacements"] += len(replaced)
        return Registration(node=stored, new=known is None, replaced=replaced)

    def heartbeat(self, node_id: str, load: NodeLoad, owner: str = "") -> bool:
        """Record ``load`` and liveness; False when the id is unknown (the node must register).
        ``NotOwner`` when the id was registered from another certificate."""
        self.expire()
        status = self._nodes.get(node_id)
        if status is None:
            self._counts["unknown_heartbeats"] += 1
            return False
        self._check_owner(node_id, owner)
        self._nodes[node_id] = dataclasses.replace(status, load=load, last_seen=self._clock())
        self._counts["heartbeats"] += 1
        return True

    def deregister(self, node_id: str, owner: str = "") -> bool:
        """Remove a node that is leaving; False when it was not registered, ``NotOwner`` when it
        was registered from another certificate."""
        self.expire()
        if node_id in self._nodes:
            self._check_owner(node_id, owner)
        removed = self._nodes.pop(node_id, None) is not None
        self._owners.pop(node_id, None)
        self._counts["deregistrations"] += removed
        return removed

    def expire(self) -> list[NodeStatus]:
        """Remove nodes silent for longer than the expiry window and return them."""
        cutoff = self._clock() - self._config.expiry_s
        gone = [status for status in self._nodes.values() if status.last_seen < cutoff]
        for status in gone:
            del self._nodes[status.info.node_id]
            self._owners.pop(status.info.node_id, None)
            self._counts["expirations"] += 1
            if self._on_expire is not None:
                self._on_expire(status)
        return gone

    def get(self, node_id: str) -> NodeStatus | None:
        """The live node with this id, if any."""
        self.expire()
        return self._nodes.get(node_id)

    def snapshot(self) -> Snapshot:
        """The live nodes now, ordered by id so policies are deterministic."""
        self.expire()
        ordered = tuple(self._nodes[node_id] for node_id in sorted(self._nodes))
        return Snapshot(taken_at=self._clock(), nodes=ordered)

    def metrics(self) -> dict[str, float]:
        """Node counts by role and the event counters since start (``*_total``)."""
        out: dict[str, float] = {f"{name}_total": float(n) for name, n in self._counts.items()}
        out["nodes"] = float(len(self._nodes))
        for role in Role:
            out[f"nodes_{role.value}"] = float(
                sum(1 for status in self._nodes.values() if status.info.role is role)
            )
        return out

    def __len__(self) -> int:
        return len(self._nodes)

    def _check_owner(self, node_id: str, owner: str, what: str = "") -> None:
        bound = self._owners.get(node_id, "")
        if node_id in self._nodes and bound and bound != owner:
            self._counts["refused_not_owner"] += 1
            raise NotOwner(
                f"{what}node {node_id!r} is registered from another certificate; it may be "
                "registered, heartbeated or deregistered only from that one until it leaves"
            )

    def _unused_id(self, role: Role) -> str:
        for _ in range(100):
            node_id = self._new_id(role)
            if node_id not in self._nodes:
                return node_id
        raise RuntimeError("id factory keeps returning ids already in use")
