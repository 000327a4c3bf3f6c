"""Wire <-> domain conversion for the coordinator, with input checks that name the bad field.

This is the RPC edge: nothing past it sees a protobuf message, and nothing past it needs to
re-check sizes or ranges.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import TypeVar

from coordinator.costmodel import Prediction, Request
from coordinator.nodes import ModelSpec, NodeInfo, NodeLoad, Role
from coordinator.requests import Job, Plan, PlanQuery, Sampling
from node_runtime.kinds import KPolicy, Mode, Objective, QualityFloor
from tandem_wire.v1 import tandem_pb2 as pb

# Bounds on everything a node may send, so one bad client cannot bloat the registry.
MAX_ID_CHARS = 128
MAX_TEXT_CHARS = 256
MAX_MODELS = 64
MAX_EXCLUDE = 1024
MAX_TOKENS = 1 << 20  # max_new_tokens of a plan
MAX_PROMPT_CHARS = 1 << 20  # a job's prompt text
MAX_DRAFT_LENGTH = 64  # a job's starting k (the edge checks its own, smaller cap)
MAX_DEADLINE_S = 3600.0  # a job's deadline
MAX_CANDIDATES = 12  # runners-up listed in a PlanReply
_ID_PATTERN = re.compile(r"[A-Za-z0-9._:@/-]+")

T = TypeVar("T")
_ROLE_FROM_WIRE = {pb.ROLE_EDGE: Role.EDGE, pb.ROLE_CLOUD: Role.CLOUD}
_ROLE_TO_WIRE = {role: wire for wire, role in _ROLE_FROM_WIRE.items()}


class InvalidField(ValueError):
    """A request field is missing or out of range; the message starts with the field's path."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


def node_id_from_wire(value: str, field: str, required: bool = True) -> str:
    """Check a node id: required unless told, bounded, and made of safe characters."""
    if not value:
        if required:
            raise InvalidField(field, "required, got an empty string")
        return ""
    if len(value) > MAX_ID_CHARS:
        raise InvalidField(field, f"at most {MAX_ID_CHARS} characters, got {len(value)}")
    if not _ID_PATTERN.fullmatch(value):
        raise InvalidField(field, f"only letters, digits and ._:@/- allowed, got {value!r}")
    return value


def _text(value: str, field: str) -> str:
    if len(value) > MAX_TEXT_CHARS:
        raise InvalidField(field, f"at most {MAX_TEXT_CHARS} characters, got {len(value)}")
    return value


def _address(value: str, field: str) -> str:
    if not value:
        raise InvalidField(field, "required: the host:port where the node's gRPC server listens")
    _text(value, field)
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidField(field, f"must be host:port with a port in 1..65535, got {value!r}")
    return value


def _telemetry_endpoint(value: str, field: str) -> str:
    """Empty (no telemetry), ``tcp://host:port`` or ``host:port``: the intake connects to it, so
    another scheme (``inproc://``, ``ipc://``) would point it at this process or its disk."""
    if not value:
        return ""
    _text(value, field)
    rest = value.removeprefix("tcp://")
    if "://" in rest or "/" in rest:
        raise InvalidField(field, f"must be tcp://host:port or host:port, got {value!r}")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidField(
            field, f"must be tcp://host:port or host:port, port in 1..65535, got {value!r}"
        )
    return value


def _fingerprint(value: str, field: str) -> str:
    if len(value) > MAX_ID_CHARS:
        raise InvalidField(field, f"at most {MAX_ID_CHARS} characters, got {len(value)}")
    if value and not _ID_PATTERN.fullmatch(value):
        raise InvalidField(field, f"only letters, digits and ._:@/- allowed, got {value!r}")
    return value


def _non_negative(value: int, field: str) -> int:
    if value < 0:
        raise InvalidField(field, f"must be >= 0, got {value}")
    return value


def _model_from_wire(msg: pb.ModelInfo, field: str) -> ModelSpec:
    if not msg.name:
        raise InvalidField(f"{field}.name", "required, got an empty string")
    return ModelSpec(
        name=_text(msg.name, f"{field}.name"),
        parameters=_non_negative(msg.parameters, f"{field}.parameters"),
        vocab_size=_non_negative(msg.vocab_size, f"{field}.vocab_size"),
        backend=_text(msg.backend, f"{field}.backend"),
    )


def node_from_wire(msg: pb.NodeInfo, field: str = "node") -> NodeInfo:
    """A checked ``NodeInfo``; node_id may be empty (the registry assigns one)."""
    role = _ROLE_FROM_WIRE.get(msg.role)
    if role is None:
        name = pb.Role.Name(msg.role) if msg.role in pb.Role.values() else str(msg.role)
        raise InvalidField(f"{field}.role", f"must be ROLE_EDGE or ROLE_CLOUD, got {name}")
    if len(msg.models) > MAX_MODELS:
        raise InvalidField(
            f"{field}.models", f"at most {MAX_MODELS} entries, got {len(msg.models)}"
        )
    return NodeInfo(
        node_id=node_id_from_wire(msg.node_id, f"{field}.node_id", required=False),
        role=role,
        address=_address(msg.address, f"{field}.address"),
        models=tuple(
            _model_from_wire(model, f"{field}.models[{i}]") for i, model in enumerate(msg.models)
        ),
        device=_text(msg.device, f"{field}.device"),
        memory_bytes=_non_negative(msg.memory_bytes, f"{field}.memory_bytes"),
        max_sessions=_non_negative(msg.max_sessions, f"{field}.max_sessions"),
        telemetry_address=_telemetry_endpoint(msg.telemetry_address, f"{field}.telemetry_address"),
        tokenizer=_fingerprint(msg.tokenizer, f"{field}.tokenizer"),
    )


def node_to_wire(info: NodeInfo) -> pb.NodeInfo:
    """The wire form of a stored node."""
    return pb.NodeInfo(
        node_id=info.node_id,
        role=_ROLE_TO_WIRE[info.role],
        address=info.address,
        models=[
            pb.ModelInfo(
                name=spec.name,
                parameters=spec.parameters,
                vocab_size=spec.vocab_size,
                backend=spec.backend,
            )
            for spec in info.models
        ],
        device=info.device,
        memory_bytes=info.memory_bytes,
        max_sessions=info.max_sessions,
        telemetry_address=info.telemetry_address,
        tokenizer=info.tokenizer,
    )


def load_from_wire(msg: pb.NodeLoad, field: str = "load") -> NodeLoad:
    """A checked ``NodeLoad``: counts >= 0, busy fraction in [0, 1], finite rates."""
    busy, rate = msg.busy_fraction, msg.tokens_per_s
    if not (math.isfinite(busy) and 0.0 <= busy <= 1.0):
        raise InvalidField(f"{field}.busy_fraction", f"must be in [0, 1], got {busy}")
    if not (math.isfinite(rate) and rate >= 0.0):
        raise InvalidField(f"{field}.tokens_per_s", f"must be finite and >= 0, got {rate}")
    return NodeLoad(
        active_sessions=_non_negative(msg.active_sessions, f"{field}.active_sessions"),
        queue_depth=_non_negative(msg.queue_depth, f"{field}.queue_depth"),
        busy_fraction=busy,
        tokens_per_s=rate,
    )


def exclude_from_wire(values: Sequence[str], field: str = "exclude") -> frozenset[str]:
    """The ids an edge has given up on, bounded in count and length."""
    if len(values) > MAX_EXCLUDE:
        raise InvalidField(field, f"at most {MAX_EXCLUDE} entries, got {len(values)}")
    return frozenset(node_id_from_wire(v, f"{field}[{i}]") for i, v in enumerate(values))


def _enum(parse: Callable[[int], T], value: int, field: str) -> T:
    try:
        return parse(value)
    except ValueError as err:  # kinds' messages start with the field's short name
        raise InvalidField(field, str(err).split(": ", 1)[-1]) from None


def _cost_weight(value: float, field: str) -> float:
    if not (math.isfinite(value) and value >= 0):
        raise InvalidField(field, f"must be finite and >= 0, got {value}")
    return value or 1.0  # 0: unset, the default weight


def plan_query_from_wire(r: pb.PlanRequest) -> PlanQuery:
    """A checked ``PlanQuery``; InvalidField names what is wrong."""
    if not 0 <= r.max_new_tokens <= MAX_TOKENS:
        raise InvalidField("max_new_tokens", f"must be 0 to {MAX_TOKENS}, got {r.max_new_tokens}")
    request = Request(
        new_tokens=max(r.max_new_tokens, 1),
        objective=_enum(Objective.from_wire, r.objective, "objective"),
        quality_floor=_enum(QualityFloor.from_wire, r.quality_floor, "quality_floor"),
        cost_weight=_cost_weight(r.cost_weight, "cost_weight"),
        exclude=tuple(sorted(exclude_from_wire(r.exclude))),
        pipelined=r.pipelined,
        allow_pipelined=r.allow_pipelined,
        text_drafts=r.text_drafts,
    )
    return PlanQuery(
        edge_id=node_id_from_wire(r.edge_id, "edge_id", required=False),
        request=request,
        model=_text(r.model, "model"),
        tokenizer=_fingerprint(r.tokenizer, "tokenizer"),
    )


def prediction_to_wire(p: Prediction) -> pb.Candidate:
    """One scored prediction as a ``Candidate``."""
    return pb.Candidate(
        mode=p.mode.to_wire(),
        draft_length=p.k,
        cloud_id=p.cloud_id,
        latency_s=p.latency_s,
        cloud_cpu_s=p.cloud_cpu_s,
        cost=p.cost,
        pipelined=p.pipelined,
    )


def plan_to_wire(plan: Plan) -> pb.PlanReply:
    """A plan as the ``PlanReply`` edges read."""
    best = plan.best
    return pb.PlanReply(
        mode=best.mode.to_wire(),
        draft_length=best.k,
        cloud=node_to_wire(plan.cloud) if plan.cloud else pb.NodeInfo(),
        predicted_latency_s=best.latency_s,
        predicted_cloud_cpu_s=best.cloud_cpu_s,
        reason=plan.reason,
        candidates=[prediction_to_wire(p) for p in plan.candidates[:MAX_CANDIDATES]],
        pipelined=best.pipelined,
    )


def job_from_wire(r: pb.JobRequest) -> Job:
    """A checked ``Job``; InvalidField names what is wrong."""
    if not r.prompt and not r.chat_json:
        raise InvalidField("prompt", "must not be empty (or set chat_json)")
    if r.prompt and r.chat_json:
        raise InvalidField("prompt", "must be empty when chat_json is set")
    for name, text in (("prompt", r.prompt), ("chat_json", r.chat_json)):
        if len(text) > MAX_PROMPT_CHARS:
            raise InvalidField(name, f"at most {MAX_PROMPT_CHARS} characters, got {len(text)}")
    if not 0 <= r.draft_length <= MAX_DRAFT_LENGTH:
        raise InvalidField("draft_length", f"must be 0 to {MAX_DRAFT_LENGTH}, got {r.draft_length}")
    if r.k_policy:
        try:
            KPolicy.parse(r.k_policy)
        except ValueError as err:
            raise InvalidField("k_policy", str(err).split(": ", 1)[-1]) from None
    if not (math.isfinite(r.deadline_s) and 0 <= r.deadline_s <= MAX_DEADLINE_S):
        raise InvalidField("deadline_s", f"must be 0 to {MAX_DEADLINE_S:g}, got {r.deadline_s}")
    if not 0 <= r.max_new_tokens <= MAX_TOKENS:
        raise InvalidField("max_new_tokens", f"must be 0 to {MAX_TOKENS}, got {r.max_new_tokens}")
    t, top_p = r.sampling.temperature, r.sampling.top_p
    if not (math.isfinite(t) and t >= 0):
        raise InvalidField("sampling.temperature", f"must be finite and >= 0, got {t}")
    if not (math.isfinite(top_p) and 0 <= top_p <= 1):
        raise InvalidField("sampling.top_p", f"must be in [0, 1], got {top_p}")
    return Job(
        job_id=_text(r.job_id, "job_id"),
        prompt=r.prompt,
        sampling=Sampling(t, top_p, r.sampling.seed),
        objective=_enum(Objective.from_wire, r.objective, "objective"),
        quality_floor=_enum(QualityFloor.from_wire, r.quality_floor, "quality_floor"),
        cost_weight=_cost_weight(r.cost_weight, "cost_weight") if r.cost_weight else 0.0,
        deadline_s=r.deadline_s,
        max_new_tokens=r.max_new_tokens,
        edge_id=node_id_from_wire(r.edge_id, "edge_id", required=False),
        pipelined=r.pipelined,
        mode=_enum(Mode.from_wire, r.mode, "mode"),
        k_policy=r.k_policy,
        draft_length=r.draft_length,
        chat_json=r.chat_json,
    )


def solve_request_to_wire(job: Job, job_id: str) -> pb.SolveRequest:
    """The ``SolveRequest`` that runs ``job`` on an edge, which plans its mode itself unless the
    job names one (drafting ahead when the job insists, else as its plan says)."""
    s = job.sampling
    return pb.SolveRequest(
        request_id=job_id,
        prompt=job.prompt,
        sampling=pb.Sampling(temperature=s.temperature, top_p=s.top_p, seed=s.seed),
        mode=job.mode.to_wire() if job.mode is not None else pb.MODE_UNSPECIFIED,
        max_new_tokens=job.max_new_tokens,
        objective=job.objective.to_wire(),
        quality_floor=job.quality_floor.to_wire(),
        cost_weight=job.cost_weight,
        pipelined=job.pipelined,
        k_policy=job.k_policy,
        draft_length=job.draft_length,
        chat_json=job.chat_json,
    )
