"""How an edge node finds cloud nodes, plans with the coordinator and measures its links.

Cloud nodes come from the coordinator (and a fixed list); a route table can send a cloud's
registered address through another one, which is how experiments put a link emulator between an
edge and a cloud. Round trips are measured by probes and by every verify round.

The coordinator is not the only source of truth: every cloud the edge has learned of stays a
candidate while it answers probes, so a coordinator restart (whose registry is empty until the
nodes re-register) does not push requests onto the edge alone. Channels to a cloud that went
down are replaced rather than left in gRPC's reconnect backoff, so a restarted cloud is used at
once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from node_runtime.kinds import Mode, Objective, QualityFloor
from node_runtime.serving import aio_channel, log_event
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

log = logging.getLogger("tandem.edge")
# gRPC's default reconnect backoff grows to 120 s; a cloud that restarts in seconds should be
# found again in about a second, even by a channel that a running request still holds. A local
# subchannel pool makes a replaced channel really new: channels share subchannels (and their
# backoff) process-wide otherwise.
RECONNECT_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.use_local_subchannel_pool", 1),
]


@dataclass(frozen=True)
class CloudRef:
    """A cloud node as the edge knows it."""

    node_id: str
    address: str
    model: str = ""


@dataclass(frozen=True)
class PlanAsk:
    """What the edge asks the coordinator to plan."""

    objective: Objective = Objective.LATENCY  # what the plan minimizes
    floor: QualityFloor | None = None  # None: the request did not say (the coordinator's default)
    cost_weight: float = 0.0  # MIX: seconds of latency one cloud CPU-second is worth; 0: default
    prompt_tokens: int = 0  # tokens already in the sequence
    max_new: int = 0  # tokens still to generate
    pipelined: bool = False  # the request insists on drafting ahead (speculation only so)
    allow_pipelined: bool = True  # this edge can draft ahead: the plan may choose to
    text_drafts: bool = False  # greedy on an edge with a tokenizer: drafts may travel as text


@dataclass(frozen=True)
class Plan:
    """The coordinator's plan for one request."""

    mode: Mode  # where the request runs
    k: int  # the draft length the plan assumed (0: not speculation)
    cloud: CloudRef | None  # the cloud to start on; None for edge-only
    pipelined: bool = False  # speculation drafts the next round while one is in flight


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
        self._coord_channel = (
            aio_channel(coordinator, options=RECONNECT_OPTIONS, identity=edge_id)
            if coordinator
            else None
        )
        self._coord = pb_grpc.CoordinatorStub(self._coord_channel) if coordinator else None
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._closing: set[asyncio.Task[None]] = set()  # retired channels being closed
        self.known: dict[str, CloudRef] = {a: CloudRef(a, a) for a in self.static}
        self.rtt_ms: dict[str, float] = {}  # EWMA round trip per cloud node id
        self.last_ok: dict[str, float] = {}  # monotonic time a cloud last answered, per node id
        self.forget_after_s = 10.0  # a cloud the coordinator no longer lists is kept this long
        # after its last answer (a restarted coordinator lists nothing until nodes re-register)
        self._probe: asyncio.Task[None] | None = None
        self.peer_edges: list[str] = []  # other edge nodes, for fanning out drafts
        self.plan_ttl_s = 1.0  # how long a plan (or a pick) is reused for like requests
        self.plan_max_stale_s = 10.0  # an older plan is refreshed before it is used
        self.plan_cache_size = 256  # like-request plans kept at the most (least recent go)
        self._refreshing: dict[tuple[object, ...], asyncio.Task[pb.PlanReply | None]] = {}
        # (made at, plan, the RTTs it was made for), least recently used first
        self._plans: OrderedDict[
            tuple[object, ...], tuple[float, pb.PlanReply, dict[str, float]]
        ] = OrderedDict()
        self._picks: OrderedDict[tuple[str, ...], tuple[float, str]] = OrderedDict()

    @property
    def cached_plans(self) -> int:
        """Plans held for like requests."""
        return len(self._plans)

    @property
    def has_coordinator(self) -> bool:
        """Whether a coordinator plans and picks for this edge."""
        return self._coord is not None

    def stub(self, address: str) -> pb_grpc.CloudStub:
        """A Cloud stub over a cached channel to ``address`` (through its route, if any).

        A cached channel whose connection failed is replaced: gRPC would otherwise keep it in
        reconnect backoff and fail every call on it for up to the backoff's length.
        """
        target = self.routes.get(address, address)
        ch = self._channels.get(target)
        if ch is not None and ch.get_state() == grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            self._retire(target)
            ch = None
        if ch is None:
            ch = aio_channel(target, client_id=self.edge_id, options=RECONNECT_OPTIONS)
            self._channels[target] = ch
        return pb_grpc.CloudStub(ch)

    def _retire(self, target: str) -> None:
        """Close the channel to ``target`` in the background, letting calls on it finish."""
        ch = self._channels.pop(target, None)
        if ch is None:
            return
        with contextlib.suppress(RuntimeError):  # no running loop: close() will not run either
            task = asyncio.get_running_loop().create_task(ch.close(grace=1.0))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def observe_rtt(self, node_id: str, ms: float, alpha: float = 0.3) -> None:
        """Fold one round-trip measurement into the node's EWMA (the node answered)."""
        old = self.rtt_ms.get(node_id)
        self.rtt_ms[node_id] = ms if old is None else (1 - alpha) * old + alpha * ms
        self.last_ok[node_id] = time.monotonic()

    def dial_address(self, node_id: str) -> str:
        """The address to dial for a known cloud (through its route, if any)."""
        ref = self.known.get(node_id)
        address = ref.address if ref else node_id
        return self.routes.get(address, address)

    def model_of(self, node_id: str) -> str:
        """The model a known cloud serves ('' when unknown)."""
        ref = self.known.get(node_id)
        return ref.model if ref else ""

    async def pick(self, exclude: Sequence[str]) -> tuple[str, pb_grpc.CloudStub] | None:
        """A cloud node (its id and a stub) not in ``exclude``, or None when there is none.

        The coordinator's pick first; without an answer from it, the known clouds (the fixed
        list and those learned from the coordinator), the ones that answered lately first.
        """
        if self._coord is not None:
            key = tuple(sorted(exclude))
            hit = self._picks.get(key)
            fresh = hit is not None and time.monotonic() - hit[0] < self.plan_ttl_s
            if fresh and hit is not None and hit[1] in self.known:
                return hit[1], self.stub(self.known[hit[1]].address)
            try:
                reply = await self._coord.PickCloud(
                    pb.PickCloudRequest(edge_id=self.edge_id, exclude=list(exclude)),
                    timeout=self.timeout_s,
                )
                if reply.cloud.address:
                    self._remember(reply.cloud)
                    _put(self._picks, key, (time.monotonic(), reply.cloud.node_id), 64)
                    return reply.cloud.node_id, self.stub(reply.cloud.address)
            except grpc.aio.AioRpcError as exc:
                log_event(log, "pick_cloud_failed", logging.WARNING, code=exc.code().name)
        for ref in self._fallbacks(exclude):
            return ref.node_id, self.stub(ref.address)
        return None

    def _fallbacks(self, exclude: Sequence[str]) -> list[CloudRef]:
        """Known clouds not in ``exclude``: recently answering first, then by RTT."""
        now = time.monotonic()

        def rank(ref: CloudRef) -> tuple[bool, float]:
            recent = now - self.last_ok.get(ref.node_id, -math.inf) < self.forget_after_s
            return (not recent, self.rtt_ms.get(ref.node_id, math.inf))

        left = [r for r in self.known.values() if r.node_id not in exclude]
        return sorted(left, key=rank)

    async def plan_for(self, ask: PlanAsk, fresh: bool = False) -> Plan | None:
        """The coordinator's plan for ``ask`` (see ``plan``), as domain values."""
        request = pb.PlanRequest(
            edge_id=self.edge_id,
            objective=ask.objective.to_wire(),
            quality_floor=ask.floor.to_wire() if ask.floor else pb.QUALITY_UNSPECIFIED,
            cost_weight=ask.cost_weight,
            prompt_tokens=ask.prompt_tokens,
            max_new_tokens=ask.max_new,
            pipelined=ask.pipelined,
            allow_pipelined=ask.allow_pipelined,
            text_drafts=ask.text_drafts,
        )
        reply = await self.plan(request, fresh)
        if reply is None:
            return None
        try:
            mode = Mode.from_wire(reply.mode)
        except ValueError:
            mode = None
        if mode is None:  # a coordinator of a newer contract: plan here instead
            log_event(log, "plan_unreadable", logging.WARNING, mode=reply.mode)
            return None
        c = reply.cloud
        cloud = CloudRef(c.node_id, c.address, _model(c)) if c.address else None
        piped = ask.pipelined or (reply.pipelined and mode is Mode.SPECULATION)
        return Plan(mode, reply.draft_length, cloud, piped)

    async def plan(self, request: pb.PlanRequest, fresh: bool = False) -> pb.PlanReply | None:
        """The coordinator's plan, or None when there is no coordinator or it cannot plan.

        A plan for a like request (same objective, floor, weight, exclusions, drafting-ahead
        choices and a length in the same power-of-two bucket) is served from memory: a round
        trip to the coordinator per request costs as much as a few tokens on a fast link. Past
        ``plan_ttl_s`` it is still served (up to ``plan_max_stale_s``) while a fresh one is
        fetched in the background, so no request waits for the coordinator once like requests
        have been planned. ``fresh`` asks the coordinator now (a plan revision mid-request). At
        most ``plan_cache_size`` plans are kept: a client varying ``cost_weight`` must not grow
        the edge's memory.
        """
        if self._coord is None:
            return None
        key = (
            request.objective,
            request.quality_floor,
            request.cost_weight,
            request.model,
            tuple(request.exclude),
            request.pipelined,
            request.allow_pipelined,
            request.text_drafts,
            max(request.max_new_tokens, 1).bit_length(),
        )
        hit = self._plans.get(key)
        age = time.monotonic() - hit[0] if hit is not None else float("inf")
        if hit is not None and self._links_moved(hit[2]):
            fresh = True  # the plan was made for links that are not there any more
        if not fresh and hit is not None and age < self.plan_max_stale_s:
            self._plans.move_to_end(key)
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
        _put(self._plans, key, (time.monotonic(), reply, dict(self.rtt_ms)), self.plan_cache_size)
        return reply

    def _remember(self, info: pb.NodeInfo) -> None:
        self.known[info.node_id] = CloudRef(info.node_id, info.address, _model(info))

    async def refresh(self) -> None:
        """Learn the live cloud nodes from the coordinator; forget clouds gone quiet."""
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
        now = time.monotonic()
        for node_id in [k for k in self.known if k not in live and k not in self.static]:
            if now - self.last_ok.get(node_id, -math.inf) < self.forget_after_s:
                continue  # unlisted but answering: the coordinator may have restarted
            del self.known[node_id]
            self.rtt_ms.pop(node_id, None)
            self.last_ok.pop(node_id, None)
        wanted = {self.routes.get(r.address, r.address) for r in self.known.values()}
        for target in [t for t in self._channels if t not in wanted]:
            self._retire(target)  # a cloud forgotten (or moved to a new address)

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
        await asyncio.gather(*self._closing, return_exceptions=True)
        if self._coord_channel is not None:
            await self._coord_channel.close()


def _model(info: pb.NodeInfo) -> str:
    return info.models[0].name if info.models else ""


def _put(cache: OrderedDict[Any, Any], key: Any, value: Any, size: int) -> None:
    """Insert as most recent, dropping the least recent entries past ``size``."""
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > size:
        cache.popitem(last=False)
