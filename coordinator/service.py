"""The Coordinator gRPC service: a thin servicer over the registry and the pick policies.

Handlers convert the request (``coordinator.convert``), call the registry or a policy, and convert
back. A background task expires silent nodes and logs the counters, since the Coordinator service
has no Metrics RPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import NoReturn

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from coordinator.convert import (
    InvalidField,
    exclude_from_wire,
    job_from_wire,
    load_from_wire,
    node_from_wire,
    node_id_from_wire,
    node_to_wire,
    plan_query_from_wire,
    plan_to_wire,
)
from coordinator.http import start_http
from coordinator.jobs import Scheduler
from coordinator.nodes import NodeInfo, NodeStatus, Snapshot
from coordinator.policy import (
    DEFAULT_POLICY,
    POLICIES,
    sharing_tokenizer,
    tokenizer_mismatch,
    why_none,
)
from coordinator.registry import CoordinatorConfig, NotOwner, Registry, RegistryFull
from coordinator.requests import NoPlan
from coordinator.telemetry import TelemetryIntake
from node_runtime.errors import Precondition
from node_runtime.security import peer_node
from node_runtime.serving import aio_server, bind, log_event, setup_logging, write_ready
from node_runtime.telemetry import Reading
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

log = logging.getLogger("coordinator")
SERVICE_NAME = "tandem_wire.v1.Coordinator"


async def _abort(
    context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str
) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("context.abort returned")  # abort always raises; this tells type checkers


async def _invalid(context: grpc.aio.ServicerContext, err: InvalidField) -> NoReturn:
    await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(err))


async def _denied(context: grpc.aio.ServicerContext, node_id: str, reason: str) -> NoReturn:
    log_event(
        log,
        "identity_refused",
        logging.WARNING,
        node_id=node_id,
        peer=context.peer(),
        reason=reason,
    )
    await _abort(context, grpc.StatusCode.PERMISSION_DENIED, reason)


async def _own_id(context: grpc.aio.ServicerContext, node_id: str) -> str:
    """The caller's certificate fingerprint, after checking that a certificate naming a node is
    used for that node only; PERMISSION_DENIED otherwise."""
    named, owner = peer_node(context)
    if named and node_id != named:
        await _denied(
            context, node_id, f"the caller's certificate names node {named!r}, not {node_id!r}"
        )
    return owner


class CoordinatorServicer(pb_grpc.CoordinatorServicer):
    """Register, Heartbeat, Deregister, PickCloud, ListNodes, Plan, Submit over one ``Registry``.

    Every failure leaves as a status with a message: bad input INVALID_ARGUMENT naming the field
    (``InvalidField``), a full registry RESOURCE_EXHAUSTED, nothing that fits UNAVAILABLE, nodes
    that cannot work together FAILED_PRECONDITION (``Precondition``); anything else the server's
    interceptor turns into INTERNAL with an error id.
    """

    def __init__(
        self,
        config: CoordinatorConfig,
        clock: Callable[[], float] = time.monotonic,
        policy: str = DEFAULT_POLICY,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown pick policy {policy!r}; known: {sorted(POLICIES)}")
        self.config = config
        self.registry = Registry(config, clock, on_expire=self._log_expired)
        self._policy = POLICIES[policy]
        self._picks = {"picks_total": 0, "picks_unavailable_total": 0}
        self.telemetry = TelemetryIntake()
        self.scheduler = Scheduler(self.registry, self.readings)

    async def Register(
        self, request: pb.RegisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.RegisterReply:
        """Add or update a node; RESOURCE_EXHAUSTED when the registry is full."""
        try:
            if not request.HasField("node"):
                raise InvalidField("node", "required")
            info = node_from_wire(request.node)
        except InvalidField as err:
            await _invalid(context, err)
        named, _ = peer_node(context)
        if named and not info.node_id:
            info = dataclasses.replace(info, node_id=named)  # the certificate's id, not a new one
        owner = await _own_id(context, info.node_id)
        try:
            done = self.registry.register(info, owner)
        except NotOwner as err:
            await _denied(context, info.node_id, str(err))
        except RegistryFull as err:
            log_event(log, "node_rejected", logging.WARNING, address=info.address, reason=str(err))
            await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(err))
        for gone in done.replaced:
            self.telemetry.node_removed(gone.node_id)
            log_event(
                log,
                "node_replaced",
                node_id=gone.node_id,
                by=done.node.node_id,
                address=gone.address,
            )
        log_event(
            log,
            "node_registered" if done.new else "node_reregistered",
            node_id=done.node.node_id,
            role=done.node.role.value,
            address=done.node.address,
            models=[spec.name for spec in done.node.models],
            tokenizer=done.node.tokenizer,
        )
        self.telemetry.node_registered(done.node)
        return pb.RegisterReply(
            node_id=done.node.node_id, heartbeat_interval_s=self.config.heartbeat_interval_s
        )

    async def Heartbeat(
        self, request: pb.HeartbeatRequest, context: grpc.aio.ServicerContext
    ) -> pb.HeartbeatReply:
        """Record load; known=false tells a forgotten node to register again."""
        try:
            node_id = node_id_from_wire(request.node_id, "node_id")
            load = load_from_wire(request.load)
        except InvalidField as err:
            await _invalid(context, err)
        owner = await _own_id(context, node_id)
        try:
            known = self.registry.heartbeat(node_id, load, owner)
        except NotOwner as err:
            await _denied(context, node_id, str(err))
        if not known:
            log_event(log, "heartbeat_from_unknown_node", node_id=node_id)
        return pb.HeartbeatReply(known=known)

    async def Deregister(
        self, request: pb.DeregisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeregisterReply:
        """Remove a node that is leaving."""
        try:
            node_id = node_id_from_wire(request.node_id, "node_id")
        except InvalidField as err:
            await _invalid(context, err)
        owner = await _own_id(context, node_id)
        try:
            removed = self.registry.deregister(node_id, owner)
        except NotOwner as err:
            await _denied(context, node_id, str(err))
        if removed:
            self.telemetry.node_removed(node_id)
        log_event(log, "node_deregistered", node_id=node_id, removed=removed)
        return pb.DeregisterReply(removed=removed)

    async def PickCloud(
        self, request: pb.PickCloudRequest, context: grpc.aio.ServicerContext
    ) -> pb.PickCloudReply:
        """A cloud node for the edge; UNAVAILABLE with the reason when none fits.

        With ``tokenizer`` set (token ids will cross) only a cloud of that tokenizer fits, and
        FAILED_PRECONDITION names both sides when only tokenizers are in the way. Without it, a
        cloud sharing the registered edge's tokenizer is still preferred when there is one.
        """
        try:
            edge_id = node_id_from_wire(request.edge_id, "edge_id", required=False)
            if len(request.model) > 256:
                raise InvalidField("model", f"at most 256 characters, got {len(request.model)}")
            exclude = exclude_from_wire(request.exclude)
            tokenizer = node_id_from_wire(request.tokenizer, "tokenizer", required=False)
        except InvalidField as err:
            await _invalid(context, err)
        snapshot = self.registry.snapshot()
        self._picks["picks_total"] += 1
        if tokenizer:
            chosen = self._policy(
                sharing_tokenizer(snapshot, tokenizer), edge_id, request.model, exclude
            )
            mismatch = tokenizer_mismatch(snapshot, request.model, exclude, tokenizer)
            if chosen is None and mismatch is not None:
                self._picks["picks_unavailable_total"] += 1
                log_event(log, "pick_tokenizer_mismatch", edge_id=edge_id, reason=mismatch)
                raise Precondition(mismatch)
        else:
            chosen = self._prefer_own_tokenizer(snapshot, edge_id, request.model, exclude)
        if chosen is None:
            self._picks["picks_unavailable_total"] += 1
            reason = why_none(snapshot, request.model, exclude)
            log_event(log, "pick_unavailable", edge_id=edge_id, model=request.model, reason=reason)
            await _abort(context, grpc.StatusCode.UNAVAILABLE, reason)
        log_event(log, "cloud_picked", logging.DEBUG, edge_id=edge_id, cloud=chosen.node_id)
        return pb.PickCloudReply(cloud=node_to_wire(chosen))

    def _prefer_own_tokenizer(
        self, snapshot: Snapshot, edge_id: str, model: str, exclude: frozenset[str]
    ) -> NodeInfo | None:
        """The policy's pick among clouds of the registered edge's tokenizer, else among all."""
        edge = self.registry.get(edge_id) if edge_id else None
        if edge is not None:
            same = self._policy(
                sharing_tokenizer(snapshot, edge.info.tokenizer), edge_id, model, exclude
            )
            if same is not None:
                return same
        return self._policy(snapshot, edge_id, model, exclude)

    async def ListNodes(
        self, request: pb.ListNodesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListNodesReply:
        """Every live node, ordered by id."""
        return pb.ListNodesReply(
            nodes=[node_to_wire(status.info) for status in self.registry.snapshot().nodes]
        )

    async def Plan(
        self, request: pb.PlanRequest, context: grpc.aio.ServicerContext
    ) -> pb.PlanReply:
        """The scheduler's plan for one request of an edge; UNAVAILABLE when none is admissible."""
        try:
            query = plan_query_from_wire(request)
        except InvalidField as err:
            await _invalid(context, err)
        try:
            return plan_to_wire(self.scheduler.plan(query))
        except NoPlan as err:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, str(err))

    async def Submit(
        self, request: pb.JobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.JobEvent]:
        """Run a client's job on an edge node; stream its progress and its result."""
        try:
            job = job_from_wire(request)
        except InvalidField as err:
            await _invalid(context, err)
        try:
            async for event in self.scheduler.submit(job):
                yield event
        except NoPlan as err:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, str(err))
        except grpc.aio.AioRpcError as err:
            await _abort(context, err.code(), f"edge node: {err.details()}")

    def metrics(self) -> dict[str, float]:
        """Registry counts and counters plus pick and scheduling counters."""
        out = self.registry.metrics()
        out.update({name: float(n) for name, n in self._picks.items()})
        out.update({name: float(n) for name, n in self.scheduler.counts.items()})
        out.update(self.telemetry.stats())
        return out

    def readings(self) -> Mapping[str, Reading]:
        """The latest fresh telemetry reading of every registered node."""
        out = {}
        for status in self.registry.snapshot().nodes:
            sample = self.telemetry.latest(status.info.node_id)
            if sample is not None:
                out[status.info.node_id] = sample.reading
        return out

    def _log_expired(self, status: NodeStatus) -> None:
        self.telemetry.node_removed(status.info.node_id)
        log_event(
            log,
            "node_expired",
            logging.WARNING,
            node_id=status.info.node_id,
            role=status.info.role.value,
            address=status.info.address,
            missed_heartbeats=self.config.missed_heartbeats,
        )


async def _maintain(servicer: CoordinatorServicer) -> None:
    """Expire silent nodes twice per heartbeat interval and log the counters now and then."""
    config = servicer.config
    period = config.heartbeat_interval_s / 2
    next_log = time.monotonic() + config.metrics_log_interval_s
    while True:
        await asyncio.sleep(period)
        try:
            servicer.registry.expire()
            servicer.telemetry.sync(s.info for s in servicer.registry.snapshot().nodes)
            if time.monotonic() >= next_log:
                next_log += config.metrics_log_interval_s
                log_event(log, "coordinator_metrics", **servicer.metrics())
        except Exception:  # a bug here must not stop expiry for good
            log.exception("maintenance_failed")


class CoordinatorServer:
    """A running coordinator: gRPC server, servicer, health service and background sweeper.

    Has ``stop`` and ``wait_for_termination`` like ``grpc.aio.Server`` so callers treat it as one.
    """

    def __init__(
        self,
        server: grpc.aio.Server,
        servicer: CoordinatorServicer,
        health_servicer: health.aio.HealthServicer,
        address: str,
    ) -> None:
        self.server = server
        self.servicer = servicer
        self.health = health_servicer
        self.address = address
        self._sweeper = asyncio.create_task(_maintain(servicer), name="coordinator-sweeper")

    def metrics(self) -> dict[str, float]:
        """The servicer's counters (nodes by role, registrations, expirations, picks)."""
        return self.servicer.metrics()

    async def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, stop the sweeper, then stop the server after ``grace`` seconds."""
        await self.health.enter_graceful_shutdown()
        self._sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._sweeper
        await self.server.stop(self.servicer.config.stop_grace_s if grace is None else grace)
        await self.servicer.telemetry.stop()

    async def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Block until the server stops; False on timeout."""
        return await self.server.wait_for_termination(timeout)


async def serve(
    host: str = "127.0.0.1",
    port: int = 0,
    config: CoordinatorConfig | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[CoordinatorServer, str]:
    """Start a coordinator on ``host:port`` (0 picks a free port); returns it and its address."""
    config = config or CoordinatorConfig()
    servicer = CoordinatorServicer(config, clock)
    health_servicer = health.aio.HealthServicer()
    server = aio_server()
    pb_grpc.add_CoordinatorServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = bind(server, host, port)
    await servicer.telemetry.start()
    await server.start()
    serving = health_pb2.HealthCheckResponse.SERVING
    await health_servicer.set("", serving)
    await health_servicer.set(SERVICE_NAME, serving)
    return CoordinatorServer(server, servicer, health_servicer, address), address


async def run_coordinator_async(
    host: str,
    port: int,
    ready_file: Path | None = None,
    config: CoordinatorConfig | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT (or ``stop`` is set), then stop cleanly."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    coordinator, address = await serve(host, port, config)
    http = await start_http(coordinator, address)  # the API, when configured, and /metrics
    try:
        if ready_file is not None:
            write_ready(ready_file, address)
        log_event(
            log,
            "coordinator_listening",
            address=address,
            pid=os.getpid(),
            config=dataclasses.asdict(coordinator.servicer.config),
        )
        await stop.wait()
    finally:
        log_event(log, "coordinator_stopping", **coordinator.metrics())
        if http is not None:
            await http.stop()
        await coordinator.stop()
        if ready_file is not None:
            ready_file.unlink(missing_ok=True)  # a ready file means "listening now"
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log_event(log, "coordinator_stopped")


def run_coordinator(
    host: str = "127.0.0.1",
    port: int = 0,
    ready_file: Path | None = None,
    config: CoordinatorConfig | None = None,
    log_level: str = "info",
) -> None:
    """Process entry: JSON-line logs, serve, write ``{"address", "pid"}`` to ``ready_file``."""
    setup_logging(log_level)
    asyncio.run(run_coordinator_async(host, port, ready_file, config))
