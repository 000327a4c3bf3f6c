"""Planning requests and running client jobs: what the coordinator's Plan and Submit calls do.

Domain types in and out (``coordinator.requests``); the servicer converts. Submit relays the
edge's own events, so that part is a gRPC client and speaks the wire.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Callable, Mapping

import grpc

from coordinator.convert import solve_request_to_wire
from coordinator.nodes import Role
from coordinator.planner import make_plan
from coordinator.registry import Registry
from coordinator.requests import Job, NoPlan, Plan, PlanQuery
from node_runtime.kinds import Mode
from node_runtime.serving import aio_channel, log_event
from node_runtime.telemetry import Reading
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

log = logging.getLogger("coordinator")

DEFAULT_JOB_DEADLINE_S = 120.0


class Scheduler:
    """Plans from the registry and the latest telemetry; runs jobs on edge nodes."""

    def __init__(self, registry: Registry, readings: Callable[[], Mapping[str, Reading]]) -> None:
        self.registry = registry
        self.readings = readings
        self.counts = {"plans_total": 0, "plans_unavailable_total": 0, "jobs_total": 0}

    def edge_tokenizer(self, query: PlanQuery) -> str:
        """The edge's tokenizer fingerprint: the one it sent, else the one it registered."""
        if query.tokenizer or not query.edge_id:
            return query.tokenizer
        status = self.registry.get(query.edge_id)
        return status.info.tokenizer if status is not None else ""

    def plan(self, query: PlanQuery) -> Plan:
        """The best admissible plan; NoPlan when there is none."""
        request = query.request
        tokenizer = self.edge_tokenizer(query)
        snapshot = self.registry.snapshot()
        preds, clouds = make_plan(
            snapshot, self.readings(), query.edge_id, request, query.model, tokenizer
        )
        self.counts["plans_total"] += 1
        if not preds:
            self.counts["plans_unavailable_total"] += 1
            raise NoPlan(
                f"no live cloud node{' serving ' + query.model if query.model else ''} outside "
                f"{sorted(request.exclude)} and the quality floor "
                f"{request.quality_floor.value!r} rules out edge-only"
            )
        best = preds[0]
        cloud = next((s.info for s in clouds if s.info.node_id == best.cloud_id), None)
        reason = (
            f"{best.mode.value}"
            + (" pipelined" if best.pipelined else "")
            + (f" k={best.k}" if best.mode is Mode.SPECULATION else "")
            + f" minimises {request.objective.value}: {best.latency_s * 1e3:.1f} ms predicted, "
            f"{best.cloud_cpu_s * 1e3:.1f} ms cloud CPU"
        )
        log_event(log, "planned", logging.DEBUG, edge_id=query.edge_id, reason=reason)
        return Plan(best, cloud, tuple(preds), reason)

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

    async def submit(self, job: Job) -> AsyncIterator[pb.JobEvent]:
        """Run the job on an edge node (which plans it), relay its progress and its result."""
        job_id = job.job_id or uuid.uuid4().hex
        address = self.pick_edge(job.edge_id)
        self.counts["jobs_total"] += 1
        solve = solve_request_to_wire(job, job_id)
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
