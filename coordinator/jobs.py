"""Planning requests and running client jobs: the coordinator's Plan and Submit calls."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Callable, Mapping

import grpc

from coordinator.convert import InvalidField, exclude_from_wire, node_id_from_wire, node_to_wire
from coordinator.costmodel import CLOUD_ONLY, EDGE_ONLY, SPECULATION, Prediction, Request
from coordinator.nodes import Role
from coordinator.planner import make_plan
from coordinator.registry import Registry
from node_runtime.serving import aio_channel, log_event
from node_runtime.telemetry import Reading
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

log = logging.getLogger("coordinator")

OBJECTIVES = {
    pb.OBJECTIVE_UNSPECIFIED: "latency",
    pb.OBJECTIVE_LATENCY: "latency",
    pb.OBJECTIVE_CLOUD_COST: "cloud_cost",
    pb.OBJECTIVE_MIX: "mix",
}
FLOORS = {pb.QUALITY_UNSPECIFIED: "target", pb.QUALITY_TARGET: "target", pb.QUALITY_ANY: "any"}
MODES = {
    EDGE_ONLY: pb.MODE_EDGE_ONLY,
    CLOUD_ONLY: pb.MODE_CLOUD_ONLY,
    SPECULATION: pb.MODE_TOKEN_SPECULATION,
}
MAX_TOKENS = 1 << 20
DEFAULT_JOB_DEADLINE_S = 120.0


class NoPlan(Exception):
    """Nothing admissible: no live cloud for a lossless request, say."""


def request_from_wire(r: pb.PlanRequest) -> Request:
    """PlanRequest -> the cost model's Request; InvalidField names what is wrong."""
    if r.objective not in OBJECTIVES:
        raise InvalidField("objective", f"unknown value {r.objective}")
    if r.quality_floor not in FLOORS:
        raise InvalidField("quality_floor", f"unknown value {r.quality_floor}")
    if not 0 <= r.max_new_tokens <= MAX_TOKENS:
        raise InvalidField("max_new_tokens", f"must be 0 to {MAX_TOKENS}")
    if not r.cost_weight >= 0:
        raise InvalidField("cost_weight", "must be >= 0")
    return Request(
        new_tokens=max(r.max_new_tokens, 1),
        objective=OBJECTIVES[r.objective],
        quality_floor=FLOORS[r.quality_floor],
        cost_weight=r.cost_weight or 1.0,
        exclude=tuple(exclude_from_wire(r.exclude)),
    )


def prediction_to_wire(p: Prediction) -> pb.Candidate:
    return pb.Candidate(
        mode=MODES[p.mode],
        draft_length=p.k,
        cloud_id=p.cloud_id,
        latency_s=p.latency_s,
        cloud_cpu_s=p.cloud_cpu_s,
        cost=p.cost,
    )


class Scheduler:
    """Plans from the registry and the latest telemetry; runs jobs on edge nodes."""

    def __init__(self, registry: Registry, readings: Callable[[], Mapping[str, Reading]]) -> None:
        self.registry = registry
        self.readings = readings
        self.counts = {"plans_total": 0, "plans_unavailable_total": 0, "jobs_total": 0}

    def plan(self, r: pb.PlanRequest) -> pb.PlanReply:
        """The best admissible plan; NoPlan when there is none."""
        edge_id = node_id_from_wire(r.edge_id, "edge_id", required=False)
        if len(r.model) > 256:
            raise InvalidField("model", "at most 256 characters")
        request = request_from_wire(r)
        snapshot = self.registry.snapshot()
        preds, clouds = make_plan(snapshot, self.readings(), edge_id, request, r.model)
        self.counts["plans_total"] += 1
        if not preds:
            self.counts["plans_unavailable_total"] += 1
            raise NoPlan(
                f"no live cloud node{' serving ' + r.model if r.model else ''} outside "
                f"{sorted(request.exclude)} and the quality floor {request.quality_floor!r} "
                "rules out edge-only"
            )
        best = preds[0]
        cloud = next((s.info for s in clouds if s.info.node_id == best.cloud_id), None)
        reason = (
            f"{best.mode}"
            + (f" k={best.k}" if best.mode == SPECULATION else "")
            + f" minimises {request.objective}: {best.latency_s * 1e3:.1f} ms predicted, "
            f"{best.cloud_cpu_s * 1e3:.1f} ms cloud CPU"
        )
        log_event(log, "planned", logging.DEBUG, edge_id=edge_id, reason=reason)
        return pb.PlanReply(
            mode=MODES[best.mode],
            draft_length=best.k,
            cloud=node_to_wire(cloud) if cloud else pb.NodeInfo(),
            predicted_latency_s=best.latency_s,
            predicted_cloud_cpu_s=best.cloud_cpu_s,
            reason=reason,
            candidates=[prediction_to_wire(p) for p in preds[:12]],
        )

    def pick_edge(self, wanted: str) -> str:
        """The address of the edge to run a job on: the one asked for, or the least busy."""
        edges = self.registry.snapshot().with_role(Role.EDGE)
        if wanted:
            edges = tuple(s for s in edges if s.info.node_id == wanted)
            if not edges:
                raise NoPlan(f"edge node {wanted!r} is not live")
        if not edges:
            raise NoPlan("no live edge node")
        best = min(edges, key=lambda s: (s.load.active_sessions, s.info.node_id))
        return best.info.address

    async def submit(self, job: pb.JobRequest) -> AsyncIterator[pb.JobEvent]:
        """Plan the job, run it on an edge node, relay its progress and its result."""
        job_id = job.job_id or uuid.uuid4().hex
        if not job.prompt:
            raise InvalidField("prompt", "must not be empty")
        if not 0 <= job.deadline_s <= 3600:
            raise InvalidField("deadline_s", "must be 0 to 3600")
        address = self.pick_edge(job.edge_id)
        self.counts["jobs_total"] += 1
        solve = pb.SolveRequest(
            request_id=job_id,
            prompt=job.prompt,
            sampling=job.sampling,
            mode=pb.MODE_UNSPECIFIED,
            max_new_tokens=job.max_new_tokens,
            objective=job.objective,
            quality_floor=job.quality_floor,
            cost_weight=job.cost_weight,
        )
        async with aio_channel(address) as ch:
            call = pb_grpc.EdgeStub(ch).SolveStream(
                solve, timeout=job.deadline_s or DEFAULT_JOB_DEADLINE_S
            )
            try:
                async for event in call:
                    if event.HasField("done"):
                        done = pb.JobDone(job_id=job_id, edge_id=address, result=event.done)
                        yield pb.JobEvent(done=done)
                    else:
                        yield pb.JobEvent(progress=event)
            except grpc.aio.AioRpcError as exc:
                log_event(log, "job_failed", logging.WARNING, job_id=job_id, code=exc.code().name)
                raise
