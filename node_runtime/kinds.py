"""The kinds of request a node serves, as enums: one definition, converted to wire enums here.

Modes, draft-length policies, objectives and quality floors used to be strings repeated across
the edge, the coordinator and the CLI. Domain code takes these enums; the wire carries protobuf
enums (and the k policy as a string), converted by the functions below at the servicers.
"""

from __future__ import annotations

import enum

from tandem_wire.v1 import tandem_pb2 as pb


class Mode(str, enum.Enum):
    """Where a request runs. The value is the name users see in tables, flags and JSON."""

    EDGE_ONLY = "edge-only"  # the drafter alone, flagged as degraded quality
    CLOUD_ONLY = "cloud-only"  # the target decodes every token
    SPECULATION = "speculation"  # the edge drafts, the cloud verifies (lossless)

    def to_wire(self) -> int:
        """The protobuf ``Mode`` value."""
        return _MODE_TO_WIRE[self]

    @classmethod
    def from_wire(cls, value: int) -> Mode | None:
        """The mode a wire value names; None for MODE_UNSPECIFIED (the node picks).

        Raises ValueError naming the field for a value the contract does not define.
        """
        if value == pb.MODE_UNSPECIFIED:
            return None
        try:
            return _MODE_FROM_WIRE[value]
        except KeyError:
            raise ValueError(f"mode: {value} is not a defined Mode") from None


_MODE_TO_WIRE = {
    Mode.EDGE_ONLY: pb.MODE_EDGE_ONLY,
    Mode.CLOUD_ONLY: pb.MODE_CLOUD_ONLY,
    Mode.SPECULATION: pb.MODE_TOKEN_SPECULATION,
}
_MODE_FROM_WIRE = {v: k for k, v in _MODE_TO_WIRE.items()}


class KPolicy(str, enum.Enum):
    """How the draft length k is chosen from round to round."""

    FIXED = "fixed"  # k stays as asked
    HEURISTIC = "heuristic"  # transformers' rule: +2 after a full round, -1 after a rejection
    RTT = "rtt"  # k maximizing expected tokens per second for the measured RTT and costs

    @classmethod
    def parse(cls, text: str, default: KPolicy | None = None) -> KPolicy:
        """The policy a wire or CLI string names; ``default`` for an empty one.

        Raises ValueError naming the field and the allowed values.
        """
        if not text and default is not None:
            return default
        try:
            return cls(text)
        except ValueError:
            allowed = ", ".join(p.value for p in cls)
            raise ValueError(f"k_policy: {text!r} is not one of {allowed}") from None


class Objective(str, enum.Enum):
    """What a plan minimizes."""

    LATENCY = "latency"
    CLOUD_COST = "cloud-cost"
    MIX = "mix"  # latency + cost_weight x cloud cost

    def to_wire(self) -> int:
        """The protobuf ``Objective`` value."""
        return _OBJ_TO_WIRE[self]

    @classmethod
    def from_wire(cls, value: int) -> Objective:
        """OBJECTIVE_UNSPECIFIED means latency; an undefined value raises ValueError."""
        if value == pb.OBJECTIVE_UNSPECIFIED:
            return cls.LATENCY
        try:
            return _OBJ_FROM_WIRE[value]
        except KeyError:
            raise ValueError(f"objective: {value} is not a defined Objective") from None


_OBJ_TO_WIRE = {
    Objective.LATENCY: pb.OBJECTIVE_LATENCY,
    Objective.CLOUD_COST: pb.OBJECTIVE_CLOUD_COST,
    Objective.MIX: pb.OBJECTIVE_MIX,
}
_OBJ_FROM_WIRE = {v: k for k, v in _OBJ_TO_WIRE.items()}


class QualityFloor(str, enum.Enum):
    """The least a request accepts: the target's output, or anything (edge-only allowed)."""

    TARGET = "target"
    ANY = "any"

    def to_wire(self) -> int:
        """The protobuf ``QualityFloor`` value."""
        return pb.QUALITY_ANY if self is QualityFloor.ANY else pb.QUALITY_TARGET

    @classmethod
    def from_wire(cls, value: int) -> QualityFloor:
        """QUALITY_UNSPECIFIED means target; an undefined value raises ValueError."""
        if value in (pb.QUALITY_UNSPECIFIED, pb.QUALITY_TARGET):
            return cls.TARGET
        if value == pb.QUALITY_ANY:
            return cls.ANY
        raise ValueError(f"quality_floor: {value} is not a defined QualityFloor")

    def allows(self, mode: Mode) -> bool:
        """Whether a request with this floor may run (or degrade) in ``mode``."""
        return self is QualityFloor.ANY or mode is not Mode.EDGE_ONLY
