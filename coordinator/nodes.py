"""The coordinator's own view of nodes: plain frozen dataclasses, no wire types.

Wire messages are converted to these at the RPC edge (``coordinator.convert``), so the registry and
the scheduling policies stay pure and can be driven by simulations without gRPC.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Role(str, Enum):
    """What a node does in the system."""

    EDGE = "edge"
    CLOUD = "cloud"


@dataclass(frozen=True)
class ModelSpec:
    """One model a node serves."""

    name: str  # the name edges ask for in PickCloud
    parameters: int = 0  # parameter count, 0 when unknown
    vocab_size: int = 0  # 0 when unknown
    backend: str = ""  # torch, onnx, transformers


@dataclass(frozen=True)
class NodeInfo:
    """A registered node: who it is, where it listens, what it serves."""

    node_id: str  # assigned by the registry when the node registers without one
    role: Role
    address: str  # host:port of the node's gRPC server
    models: tuple[ModelSpec, ...] = ()
    device: str = ""  # device profile, e.g. "cpu-2core"
    memory_bytes: int = 0  # 0 when unknown
    max_sessions: int = 0  # 0: the node states no session cap
    telemetry_address: str = ""  # ZeroMQ PUB endpoint (tcp://host:port), empty when none
    tokenizer: str = ""  # fingerprint of its models' tokenizer; empty when not stated

    def shares_tokenizer(self, fingerprint: str) -> bool:
        """Whether token ids of a node with ``fingerprint`` mean the same here."""
        return self.tokenizer == fingerprint

    def serves(self, model: str) -> bool:
        """True when ``model`` is empty (any model will do) or the node serves that model."""
        return not model or any(spec.name == model for spec in self.models)


@dataclass(frozen=True)
class NodeLoad:
    """The load a node last reported in a heartbeat."""

    active_sessions: int = 0
    queue_depth: int = 0  # requests waiting, not yet being served
    busy_fraction: float = 0.0  # share of recent wall time the model was computing, in [0, 1]
    tokens_per_s: float = 0.0


@dataclass(frozen=True)
class NodeStatus:
    """A node with its latest load and when the coordinator last heard from it."""

    info: NodeInfo
    load: NodeLoad
    last_seen: float  # registry clock, seconds
    registered_at: float  # registry clock, seconds


@dataclass(frozen=True)
class Snapshot:
    """Live nodes at one instant: the only input scheduling policies get.

    Every node in ``nodes`` is live (heard from within the expiry window) at ``taken_at``.
    """

    taken_at: float
    nodes: tuple[NodeStatus, ...]

    def with_role(self, role: Role) -> tuple[NodeStatus, ...]:
        """The live nodes of one role, in snapshot order."""
        return tuple(status for status in self.nodes if status.info.role is role)
