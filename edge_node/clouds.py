"""How an edge node finds cloud nodes, plans with the coordinator and measures its links.

Cloud nodes come from the coordinator (or a fixed list when there is none); a route table can send
a cloud's registered address through another one, which is how experiments put a link emulator
between an edge and a cloud. Round trips are measured by probes and by every verify round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc

from node_runtime.serving import aio_channel, log_event
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

log = logging.getLogger("tandem.edge")


@dataclass(frozen=True)
class CloudRef:
    """A cloud node as the edge knows it."""

    node_id: str
    address: str
    model: str = ""


class CloudDirectory:
    """Picks cloud nodes, keeps one channel per address, asks for plans, measures RTT."""

    def __init__(
        self,
        edge_id: str,
        coordinator: str | None = None,
        static: Sequence[str] = (),
        timeout_s: float = 2.0,
        routes: Mapping[str, str] | None = None,
    ) -> None:
        if not coordinator and not static:
            raise ValueError("need a coordinator address or at least one cloud address")
        self.edge_id = edge_id
        self.static = list(static)
        self.timeout_s = timeout_s
        self.routes = dict(routes or {})
        self._coord_channel = aio_channel(coordinator) if coordinator else None
        self._coord = pb_grpc.CoordinatorStub(self._coord_channel) if coordinator else None
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.known: dict[str, CloudRef] = {a: CloudRef(a, a) for a in self.static}
        self.rtt_ms: dict[str, float] = {}  # EWMA round trip per cloud node id
        self._probe: asyncio.Task[None] | None = None
        self.peer_edges: list[str] = []  # other edge nodes, for fanning out drafts
        self.plan_ttl_s = 1.0  # how long a plan (or a pick) is reused for like requests
        self.plan_max_stale_s = 10.0  # an older plan is refreshed before it is used
        self._refreshing: dict[tuple[object, ...], asyncio.Task[pb.PlanReply | None]] = {}
        # (made at, plan, the RTTs it was made for)
        self._plans: dict[tuple[object, ...], tuple[float, pb.PlanReply, dict[str, float]]] = {}
        self._picks: dict[tuple[str, ...], tuple[float, str]] = {}  # like plans, for picks

    @property
    def has_coordinator(self) -> bool:
        return self._coord is not None

    def stub(self, address: str) -> pb_grpc.CloudStub:
        """A Cloud stub over a cached channel to ``address`` (through its route, if any)."""
        target = self.routes.get(address, address)
        if target not in self._channels:
            self._channels[target] = aio_channel(target)
        return pb_grpc.CloudStub(self._channels[target])

    def observe_rtt(self, node_id: str, ms: float, alpha: float = 0.3) -> None:
        """Fold one round-trip measurement into the node's EWMA."""
        old = self.rtt_ms.get(node_id)
        self.rtt_ms[node_id] = ms if old is None else (1 - alpha) * old + alpha * ms

    def dial_address(self, node_id: str) -> str:
        """The address to dial for a known cloud (through its route, if any)."""
        ref = self.known.get(node_id)
        address = ref.address if ref else node_id
        return self.routes.get(address, address)

    def model_of(self, node_id: str) -> str:
        ref = self.known.get(node_id)
        return ref.model if ref else ""

    async def pick(self, exclude: Sequence[str]) -> tuple[str, pb_grpc.CloudStub] | None:
        """A cloud node (its id and a stub) not in ``exclude``, or None when there is none."""
        if self._coord is not None:
            key = tuple(sorted(exclude))
            hit = self._picks.get(key)
            fresh = hit is not None and time.monotonic() - hit[0] < self.plan_ttl_s
            if fresh and hit[1] in self.known:
                return hit[1], self.stub(self.known[hit[1]].address)
            try:
                reply = await self._coord.PickCloud(
                    pb.PickCloudRequest(edge_id=self.edge_id, exclude=list(exclude)),
                    timeout=self.timeout_s,
                )
                if reply.cloud.address:
                    self._remember(reply.cloud)
                    self._picks[key] = (time.monotonic(), reply.cloud.node_id)
                    return reply.cloud.node_id, self.stub(reply.cloud.address)
            except grpc.aio.AioRpcError as exc:
                log_event(log, "pick_cloud_failed", logging.WARNING, code=exc.code().name)
        for address in self.static:  # the fixed list backs up an absent coordinator
            if address not in exclude:
                return address, self.stub(address)
        return None

    async def plan(self, request: pb.PlanRequest, fresh: bool = False) -> pb.PlanReply | None:
        """The coordinator's plan, or None when there is no coordinator or it cannot plan.

        A plan for a like request (same objective, floor, weight, exclusions and a length in the
        same power-of-two bucket) is served from memory: a round trip to the coordinator per
        request costs as much as a few tokens on a fast link. Past ``plan_ttl_s`` it is still
        served (up to ``plan_max_stale_s``) while a fresh one is fetched in the background, so
        no request waits for the coordinator once like requests have been planned. ``fresh``
        asks the coordinator now (a plan revision mid-request).
        """
        if self._coord is None:
            return None
        key = (
            request.objective,
            request.quality_floor,
            request.cost_weight,
            request.model,
            tuple(request.exclude),
            max(request.max_new_tokens, 1).bit_length(),
        )
        hit = self._plans.get(key)
        age = time.monotonic() - hit[0] if hit is not None else float("inf")
        if hit is not None and self._links_moved(hit[2]):
            fresh = True  # the plan was made for links that are not there any more
        if not fresh and hit is not None and age < self.plan_max_stale_s:
            if age >= self.plan_ttl_s and key not in self._refreshing:
                ask = pb.PlanRequest()
                ask.CopyFrom(request)
                task = asyncio.get_running_loop().create_task(self._fetch_plan(key, ask))
                self._refreshing[key] = task
                task.add_done_callback(lambda _: self._refreshing.pop(key, None))
            return hit[1]
        return await self._fetch_plan(key, request)

    def _links_moved(self, then: dict[str, float]) -> bool:
        """True when the RTT to a cloud moved by half (and a millisecond) since ``then``."""
        for node_id, now in self.rtt_ms.items():
            old = then.get(node_id)
            if old is not None and abs(now - old) > max(0.5 * old, 1.0):
                return True
        return False

    async def _fetch_plan(
        self, key: tuple[object, ...], request: pb.PlanRequest
    ) -> pb.PlanReply | None:
        try:
            reply = await self._coord.Plan(request, timeout=self.timeout_s)  # type: ignore[union-attr]
        except grpc.aio.AioRpcError as exc:
            log_event(log, "plan_failed", logging.WARNING, code=exc.code().name, why=exc.details())
            self._plans.pop(key, None)  # a coordinator that cannot plan: stop serving the old one
            return None
        if reply.cloud.address:
            self._remember(reply.cloud)
        self._plans[key] = (time.monotonic(), reply, dict(self.rtt_ms))
        return reply

    def _remember(self, info: pb.NodeInfo) -> None:
        model = info.models[0].name if info.models else ""
        self.known[info.node_id] = CloudRef(info.node_id, info.address, model)

    async def refresh(self) -> None:
        """Learn the live cloud nodes from the coordinator."""
        if self._coord is None:
            return
        reply = await self._coord.ListNodes(pb.ListNodesRequest(), timeout=self.timeout_s)
        live = {n.node_id for n in reply.nodes if n.role == pb.ROLE_CLOUD}
        self.peer_edges = [
            n.address for n in reply.nodes if n.role == pb.ROLE_EDGE and n.node_id != self.edge_id
        ]
        for n in reply.nodes:
            if n.role == pb.ROLE_CLOUD:
                self._remember(n)
        for node_id in [k for k in self.known if k not in live and k not in self.static]:
            del self.known[node_id]
            self.rtt_ms.pop(node_id, None)

    async def probe_once(self) -> None:
        """Refresh the cloud list and time one small call to each cloud."""
        with contextlib.suppress(grpc.aio.AioRpcError):
            await self.refresh()
        for ref in list(self.known.values()):
            t0 = time.perf_counter()
            try:
                await self.stub(ref.address).Metrics(pb.MetricsRequest(), timeout=self.timeout_s)
            except grpc.aio.AioRpcError:
                continue
            self.observe_rtt(ref.node_id, (time.perf_counter() - t0) * 1e3)

    def start_probing(self, period_s: float = 1.0) -> None:
        """Probe every ``period_s`` in the background."""

        async def loop() -> None:
            while True:
                try:
                    await self.probe_once()
                except Exception:  # a probe failure must never stop probing
                    log.exception("probe_failed")
                await asyncio.sleep(period_s)

        if self._probe is None:
            self._probe = asyncio.get_running_loop().create_task(loop())

    async def close(self) -> None:
        """Stop probing and close every channel."""
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
            self._probe = None
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()
        if self._coord_channel is not None:
            await self._coord_channel.close()
