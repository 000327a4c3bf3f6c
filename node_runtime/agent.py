"""A node's link to the coordinator: register, heartbeat, re-register, pick a cloud node.

``NodeAgent`` runs beside a node's own server. It never raises into the node when the coordinator
is down or restarts: it logs, retries with a backoff capped at the heartbeat interval, and
registers again (keeping its node id) as soon as the coordinator answers. A heartbeat refused for
a bad load figure is the node's own bug, not a lost registration: it is logged, and liveness goes
through with the last load the coordinator accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from node_runtime.serving import aio_channel, log_event
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

log = logging.getLogger("node_runtime.agent")

LoadFn = Callable[[], pb.NodeLoad]  # cheap and synchronous: it is called on every heartbeat


def _channel(address: str, interval_s: float, identity: str | None) -> grpc.aio.Channel:
    # gRPC's own reconnect backoff grows to 120 s, which would hide a coordinator that came back;
    # half an interval means the connection is up again before the next heartbeat or the one after.
    backoff_ms = max(50, int(interval_s * 500))
    options: list[tuple[str, Any]] = [
        ("grpc.initial_reconnect_backoff_ms", backoff_ms),
        ("grpc.min_reconnect_backoff_ms", backoff_ms),
        ("grpc.max_reconnect_backoff_ms", backoff_ms),
    ]
    # The node's own certificate: the coordinator binds the node id to it.
    return aio_channel(address, options=options, identity=identity)


async def pick_cloud(
    stub: pb_grpc.CoordinatorStub,
    edge_id: str,
    model: str = "",
    exclude: Sequence[str] = (),
    deadline_s: float = 2.0,
) -> pb.NodeInfo:
    """Ask the coordinator for a cloud node; raises ``grpc.aio.AioRpcError`` (UNAVAILABLE when no
    live cloud node fits, with the reason in ``details()``)."""
    request = pb.PickCloudRequest(edge_id=edge_id, model=model, exclude=list(exclude))
    reply = await stub.PickCloud(request, timeout=deadline_s)
    return reply.cloud


class NodeAgent:
    """Keeps one node registered with the coordinator for as long as it runs.

    ``node`` describes the node (role, address, models, ...); its node_id may be empty, then the
    coordinator assigns one and the agent keeps it across coordinator restarts. ``load_fn`` is
    called for every heartbeat. The heartbeat interval is the coordinator's (from RegisterReply);
    ``heartbeat_interval_s`` is used until the first registration.
    """

    def __init__(
        self,
        coordinator_address: str,
        node: pb.NodeInfo,
        load_fn: LoadFn | None = None,
        *,
        heartbeat_interval_s: float = 1.0,
        rpc_deadline_s: float = 2.0,
    ) -> None:
        if not heartbeat_interval_s > 0 or not rpc_deadline_s > 0:
            raise ValueError("heartbeat_interval_s and rpc_deadline_s must be > 0")
        self.coordinator_address = coordinator_address
        self._node = pb.NodeInfo()
        self._node.CopyFrom(node)
        # The certificate the agent presents, fixed for its life: the coordinator binds the id to
        # the certificate it registered from, so a later channel must present the same one.
        self._identity = node.node_id or None
        self._load_fn = load_fn or pb.NodeLoad
        self._interval = heartbeat_interval_s
        self._rpc_deadline = rpc_deadline_s
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.CoordinatorStub | None = None
        self._channel_interval = 0.0  # the interval the channel's reconnect backoff was set from
        self._closing: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._registered = asyncio.Event()
        self.last_error = ""  # why the last RPC (or pick) failed, for the node's own reports
        self._accepted_load = pb.NodeLoad()  # the last load the coordinator took
        self._refusals = 0  # heartbeats refused in a row
        self.counts = {
            "registrations": 0,
            "heartbeats": 0,
            "refused_heartbeats": 0,
            "failures": 0,
            "pick_failures": 0,
        }

    @property
    def node_id(self) -> str:
        """The id the coordinator knows this node by; empty until the first registration."""
        return self._node.node_id

    @property
    def registered(self) -> bool:
        """True while the coordinator is believed to know this node."""
        return self._registered.is_set()

    @property
    def heartbeat_interval_s(self) -> float:
        """The interval in use: the coordinator's once registered."""
        return self._interval

    async def start(self, wait_s: float = 0.0) -> bool:
        """Start registering and heartbeating in the background.

        Waits up to ``wait_s`` seconds for the first registration and returns whether it happened;
        a coordinator that is down is not an error, the agent keeps trying.
        """
        if self._task is None:
            self._renew_channel()
            self._task = asyncio.create_task(self._run(), name="node-agent")
        return await self.wait_registered(wait_s) if wait_s > 0 else self.registered

    async def wait_registered(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the coordinator to know this node."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._registered.wait(), timeout_s)
        return self.registered

    async def stop(self, deregister: bool = True) -> None:
        """Stop heartbeating, deregister (best effort, short deadline) and close the channel."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if deregister and self._stub is not None and self.node_id:
            request = pb.DeregisterRequest(node_id=self.node_id)
            try:
                await self._stub.Deregister(request, timeout=min(self._rpc_deadline, 1.0))
                log_event(log, "node_deregistered", node_id=self.node_id)
            except grpc.aio.AioRpcError as err:
                log_event(log, "deregister_failed", logging.WARNING, error=_describe(err))
        self._registered.clear()
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._stub = None
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def pick_cloud(
        self, model: str = "", exclude: Sequence[str] = (), deadline_s: float | None = None
    ) -> pb.NodeInfo | None:
        """A cloud node for this (edge) node, or None when there is none or the coordinator is
        unreachable; ``last_error`` then says why. Never raises a gRPC error."""
        if self._stub is None:
            self.last_error = "agent not started"
            return None
        try:
            return await pick_cloud(
                self._stub, self.node_id, model, exclude, deadline_s or self._rpc_deadline
            )
        except grpc.aio.AioRpcError as err:
            self.counts["pick_failures"] += 1
            self.last_error = _describe(err)
            log_event(log, "pick_cloud_failed", logging.WARNING, error=self.last_error)
            return None

    def _renew_channel(self) -> None:
        # A new channel when the interval changed (the coordinator's differs from ours): the
        # reconnect backoff is fixed at creation. The old one closes in the background so a
        # pick_cloud in flight on it can finish.
        old = self._channel
        self._channel = _channel(self.coordinator_address, self._interval, self._identity)
        self._stub = pb_grpc.CoordinatorStub(self._channel)
        self._channel_interval = self._interval
        if old is not None:
            task = asyncio.create_task(old.close(grace=self._rpc_deadline))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def _deadline(self) -> float:
        # About one interval, so a slow coordinator cannot stack up heartbeats, but never so short
        # that a first connection on a busy machine always times out.
        return min(self._rpc_deadline, max(self._interval, 0.25))

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                if self._channel_interval != self._interval:
                    self._renew_channel()
                if not self.registered:
                    await self._register()
                elif not await self._heartbeat():
                    self._registered.clear()
                    log_event(log, "coordinator_forgot_node", node_id=self.node_id)
                    continue  # register again at once, not an interval later
                if failures:
                    log_event(log, "coordinator_reachable", after_failures=failures)
                failures = 0
                await asyncio.sleep(self._interval)
            except Exception as err:  # the node must outlive any coordinator trouble
                failures += 1
                self.counts["failures"] += 1
                # After any failure the next success is a Register: the coordinator may have
                # restarted and forgotten us, and registering again with our id is idempotent.
                self._registered.clear()
                self.last_error = _describe(err)
                level = logging.WARNING if failures == 1 else logging.DEBUG
                log_event(
                    log, "coordinator_unreachable", level, error=self.last_error, failures=failures
                )
                await asyncio.sleep(self._backoff(failures))

    def _backoff(self, failures: int) -> float:
        # Doubling from an eighth of the interval, capped at the interval; jitter spreads the
        # nodes that all lost the same coordinator.
        base = min(self._interval, self._interval / 8 * 2 ** (failures - 1))
        return base * random.uniform(0.75, 1.0)

    async def _register(self) -> None:
        assert self._stub is not None
        reply = await self._stub.Register(
            pb.RegisterRequest(node=self._node), timeout=self._deadline()
        )
        self._node.node_id = reply.node_id
        if reply.heartbeat_interval_s > 0:
            self._interval = reply.heartbeat_interval_s
        self.counts["registrations"] += 1
        self._registered.set()
        log_event(
            log,
            "node_registered",
            node_id=reply.node_id,
            interval_s=self._interval,
            coordinator=self.coordinator_address,
        )

    async def _heartbeat(self) -> bool:
        assert self._stub is not None
        try:
            load = self._load_fn()
        except Exception as err:  # a broken load probe must not stop heartbeats
            log_event(log, "load_fn_failed", logging.WARNING, error=repr(err))
            load = pb.NodeLoad()
        try:
            reply = await self._send_heartbeat(load)
            self._accepted_load, self._refusals = load, 0
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.INVALID_ARGUMENT:
                raise
            self._refused(load, err)
            reply = await self._send_heartbeat(self._accepted_load)  # liveness still counts
        self.counts["heartbeats"] += 1
        return reply.known

    async def _send_heartbeat(self, load: pb.NodeLoad) -> pb.HeartbeatReply:
        assert self._stub is not None
        request = pb.HeartbeatRequest(node_id=self.node_id, load=load)
        return await self._stub.Heartbeat(request, timeout=self._deadline())

    def _refused(self, load: pb.NodeLoad, err: grpc.aio.AioRpcError) -> None:
        self._refusals += 1
        self.counts["refused_heartbeats"] += 1
        self.last_error = _describe(err)
        level = logging.WARNING if self._refusals == 1 else logging.DEBUG  # once per run of them
        load_text = " ".join(str(load).split())
        log_event(log, "heartbeat_refused", level, error=self.last_error, load=load_text)


def _describe(err: BaseException) -> str:
    if isinstance(err, grpc.aio.AioRpcError):
        return f"{err.code().name}: {err.details()}"
    return repr(err)
