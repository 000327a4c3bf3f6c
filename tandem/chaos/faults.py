"""The fault scenarios: each puts load on real nodes, injects one fault, heals, and records which
requests the fault hit and the evidence for it.

A request is *hit* when the fault touched it, as shown by the nodes themselves, not by timing
alone:
- a cloud lost mid-stream (kill -9, SIGSTOP, blackholed link): the request was open at the fault
  and its reply's account names the lost cloud (``note``), or it degraded, or it failed; the
  victim's own count of open sessions just before the fault (its Metrics RPC) is kept beside it;
- the coordinator restarted: the request started while the coordinator was down (the edge logged
  ``plan_failed``/``pick_cloud_failed`` in that window, which the result keeps as evidence);
- a graceful stop: the request was open on the stopping cloud (its reply names that cloud);
- a slow consumer: the slow client's own requests;
- a full disk: every request served by the edge whose log is ``/dev/full``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from node_runtime.serving import aio_channel
from tandem.chaos.cluster import ChaosCluster
from tandem.chaos.load import Load, Record
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

EDGE = "edge-a"  # the edge every scenario loads
FULL_EDGE = "edge-full"  # the edge whose log is /dev/full
CLOUDS = ("cloud-a", "cloud-b")
VICTIM = "cloud-a"


@dataclass
class Env:
    """The running cluster a scenario works on."""

    cluster: ChaosCluster
    load: Load
    links: dict[str, Any]  # cloud name -> the ThreadedLink on the edge's route to it
    clients: int = 3  # concurrent clients on the loaded edge
    outage_s: float = 6.0  # how long a fault lasts before it is healed
    settle_s: float = 1.5  # load before the fault

    def address(self, name: str) -> str:
        """Where ``name`` listens now."""
        return self.cluster.by_name[name].address


@dataclass
class FaultResult:
    """One run of one scenario."""

    scenario: str
    repeat: int
    fault_at: float  # wall time of the fault
    healed_at: float = 0.0  # wall time the fault was undone
    requests: int = 0  # requests filed under this run
    hit: list[str] = field(default_factory=list)  # ids of the requests the fault hit
    evidence: dict[str, str] = field(default_factory=dict)  # id -> why it counts as hit
    victim_sessions_at_fault: int | None = None  # the victim's own count, just before
    detect_s: float | None = None  # fault -> the edge declared the peer lost (log)
    cloud_detect_s: float | None = None  # fault -> the cloud freed the cut-off sessions
    extra: dict[str, Any] = field(default_factory=dict)
    emulated: bool = False  # the link emulator made the fault

    def as_json(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


async def metric(
    address: str, key: str, timeout_s: float = 1.0, edge: bool = False
) -> float | None:
    """One value of a node's Metrics RPC, a cloud's or an ``edge``'s (None: no answer)."""
    async with aio_channel(address) as ch:
        stub = pb_grpc.EdgeStub(ch) if edge else pb_grpc.CloudStub(ch)
        try:
            reply = await stub.Metrics(pb.MetricsRequest(), timeout=timeout_s)
        except grpc.aio.AioRpcError:
            return None
    return reply.values.get(key, 0.0)


async def health_of(address: str, timeout_s: float = 1.0) -> str:
    """The node's grpc.health.v1 status name, or the status code of the failed check."""
    async with aio_channel(address) as ch:
        try:
            r = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)


async def wait_for(
    cond: Callable[[], Awaitable[bool]], limit_s: float, poll_s: float = 0.05
) -> float | None:
    """Seconds until ``cond`` held (polled), or None when ``limit_s`` passed first."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        if await cond():
            return time.monotonic() - t0
        await asyncio.sleep(poll_s)
    return None


async def sessions_idle(env: Env, names: tuple[str, ...] = CLOUDS) -> bool:
    """Whether no cloud in ``names`` holds a verification session."""
    for n in names:
        v = await metric(env.address(n), "sessions_active")
        if v is None or v > 0:
            return False
    return True


def _lost(victim: str) -> Callable[[Record], str]:
    """Evidence that the reply's own account says ``victim`` was lost, or the request failed."""

    def why(r: Record) -> str:
        if r.outcome != "ok":
            return f"failed {r.outcome}: {r.details[:120]}"
        if f"cloud {victim} lost" in r.note:
            return f"account: {r.note[:160]}"
        if r.degraded:
            return f"degraded: {r.note[:160]}"
        return ""

    return why


def _mark(res: FaultResult, recs: list[Record], why: Callable[[Record], str]) -> None:
    """File the records ``why`` gives a reason for as hit; count those open at the fault."""
    for r in recs:
        reason = why(r)
        if reason and r.request_id not in res.evidence:
            res.hit.append(r.request_id)
            res.evidence[r.request_id] = reason
            r.hit_by.append(f"{res.scenario}#{res.repeat}")
            if r.start <= res.fault_at <= (r.end or time.time()):
                res.extra["hit_open_at_fault"] = res.extra.get("hit_open_at_fault", 0) + 1


def _first_event(
    cluster: ChaosCluster, node: str, event: str, since: float, **match: str
) -> float | None:
    """Seconds from ``since`` to the first ``event`` that ``node`` logged with ``match``."""
    for ev in cluster.events(node, since):
        if ev.get("event") == event and all(ev.get(k) == v for k, v in match.items()):
            return float(ev["ts"]) - since
    return None


async def _loaded(
    env: Env, fault: Callable[[FaultResult], Awaitable[None]], res: FaultResult, edge: str = EDGE
) -> None:
    """Run ``fault`` under client load on ``edge``; wait for every request to end."""
    stop = asyncio.Event()
    env.load.scenario = f"{res.scenario}#{res.repeat}"
    first = len(env.load.records)
    clients = asyncio.ensure_future(env.load.clients(edge, env.address(edge), env.clients, stop))
    try:
        await asyncio.sleep(env.settle_s)
        await fault(res)
    finally:
        stop.set()
        # every request carries a deadline: the clients end by then, or the requests hang
        try:
            await asyncio.wait_for(asyncio.shield(clients), env.load.deadline_s + 5)
        except asyncio.TimeoutError:
            clients.cancel()
    res.requests = len(env.load.records) - first


async def _victim_busy(env: Env, victim: str, limit_s: float = 8.0) -> int | None:
    """Wait (bounded) until the victim holds a session; its count then."""
    got: list[float] = []

    async def busy() -> bool:
        v = await metric(env.address(victim), "sessions_active")
        got.append(v or 0.0)
        return bool(v)

    await wait_for(busy, limit_s)
    return int(got[-1]) if got else None


def _mark_outage(env: Env, res: FaultResult, victims: tuple[str, ...]) -> None:
    """Mark the requests open between the fault and the healing that the victims' loss touched,
    and time the edge's detection of the first victim (its ``cloud_lost`` line)."""
    recs = [r for r in env.load.records if r.scenario == env.load.scenario]
    during = [r for r in recs if r.start <= res.healed_at and r.end >= res.fault_at]
    for v in victims:
        _mark(res, during, _lost(v))
    res.detect_s = _first_event(env.cluster, EDGE, "cloud_lost", res.fault_at, cloud=victims[0])


async def kill_cloud(env: Env, res: FaultResult, victims: tuple[str, ...] = (VICTIM,)) -> None:
    """kill -9 cloud(s) mid-stream; the other cloud takes over, or the edge degrades."""

    async def fault(r: FaultResult) -> None:
        r.victim_sessions_at_fault = await _victim_busy(env, victims[0])
        r.fault_at = min(env.cluster.kill9(v) for v in victims)
        await asyncio.sleep(env.outage_s)
        for v in victims:
            await asyncio.to_thread(env.cluster.restart, v)
        r.healed_at = time.time()

    await _loaded(env, fault, res)
    _mark_outage(env, res, victims)


async def freeze_cloud(env: Env, res: FaultResult) -> None:
    """SIGSTOP a cloud for ``outage_s``, then SIGCONT; nothing it held may stay held."""

    async def fault(r: FaultResult) -> None:
        r.victim_sessions_at_fault = await _victim_busy(env, VICTIM)
        r.fault_at = env.cluster.freeze(VICTIM)
        await asyncio.sleep(env.outage_s)
        r.healed_at = env.cluster.thaw(VICTIM)
        freed = await wait_for(lambda: sessions_idle(env, (VICTIM,)), 15.0)
        r.extra["sessions_freed_after_resume_s"] = freed

    await _loaded(env, fault, res)
    _mark_outage(env, res, (VICTIM,))


async def blackhole_link(env: Env, res: FaultResult) -> None:
    """The emulated link edge -> cloud delivers nothing, both ways, for ``outage_s``."""
    link = env.links[VICTIM]
    res.emulated = True

    async def fault(r: FaultResult) -> None:
        r.victim_sessions_at_fault = await _victim_busy(env, VICTIM)
        r.fault_at = time.time()
        await asyncio.to_thread(
            link.set, {"uplink": {"blackhole": True}, "downlink": {"blackhole": True}}
        )
        # the cloud, reached directly (not over the link), frees the sessions of the cut edge
        freed = await wait_for(lambda: sessions_idle(env, (VICTIM,)), env.outage_s)
        r.cloud_detect_s = None if freed is None else time.time() - r.fault_at
        await asyncio.sleep(max(0.0, r.fault_at + env.outage_s - time.time()))
        await asyncio.to_thread(
            link.set, {"uplink": {"blackhole": False}, "downlink": {"blackhole": False}}
        )
        r.healed_at = time.time()

    await _loaded(env, fault, res)
    _mark_outage(env, res, (VICTIM,))


async def restart_coordinator(env: Env, res: FaultResult) -> None:
    """kill -9 the coordinator and start it again on its port; the nodes register again."""

    async def fault(r: FaultResult) -> None:
        r.fault_at = env.cluster.kill9("coordinator")
        await asyncio.sleep(1.0)
        await asyncio.to_thread(env.cluster.restart, "coordinator")
        r.healed_at = time.time()

        async def all_back() -> bool:
            async with aio_channel(env.address("coordinator")) as ch:
                try:
                    reply = await pb_grpc.CoordinatorStub(ch).ListNodes(
                        pb.ListNodesRequest(), timeout=1.0
                    )
                except grpc.aio.AioRpcError:
                    return False
            return len(reply.nodes) >= len(env.cluster.by_name) - 1

        r.extra["reregistered_s"] = await wait_for(all_back, 15.0)
        await asyncio.sleep(1.0)

    await _loaded(env, fault, res)
    noticed = [
        ev
        for ev in env.cluster.events(EDGE, res.fault_at)
        if ev.get("event") in ("plan_failed", "pick_cloud_failed")
        and float(ev["ts"]) <= res.healed_at + 1
    ]
    res.extra["edge_plan_failures_in_outage"] = len(noticed)
    recs = [r for r in env.load.records if r.scenario == env.load.scenario]
    window = [r for r in recs if res.fault_at <= r.start <= res.healed_at]
    _mark(
        res,
        window,
        lambda r: (
            f"started with the coordinator down ({len(noticed)} plan/pick failures logged "
            "by the edge)"
        ),
    )


async def graceful_stop(env: Env, res: FaultResult) -> None:
    """SIGTERM a cloud with requests in flight: NOT_SERVING at once, drain, then exit."""
    address = env.address(VICTIM)

    async def fault(r: FaultResult) -> None:
        r.victim_sessions_at_fault = await _victim_busy(env, VICTIM)
        r.fault_at = env.cluster.terminate(VICTIM)
        not_serving = await wait_for(lambda: _is(address, "NOT_SERVING"), 5.0, poll_s=0.02)
        r.extra["not_serving_s"] = not_serving
        proc = env.cluster.by_name[VICTIM].popen
        exited = await wait_for(lambda: _true(proc.poll() is not None), 20.0)
        r.extra["exit_s"] = exited
        r.healed_at = time.time()
        await asyncio.to_thread(env.cluster.restart, VICTIM)

    await _loaded(env, fault, res)
    recs = [r for r in env.load.records if r.scenario == env.load.scenario]
    open_then = [r for r in recs if r.start <= res.fault_at <= (r.end or time.time())]
    drained = [r for r in open_then if r.outcome == "ok" and r.cloud_node == VICTIM and not r.note]
    res.extra["drained_on_victim"] = len(drained)
    res.extra["failed_over"] = sum(1 for r in open_then if f"cloud {VICTIM} lost" in r.note)

    def why(r: Record) -> str:
        if r.cloud_node == VICTIM or f"cloud {VICTIM}" in r.note or r.outcome != "ok":
            return f"open on {VICTIM} at SIGTERM: {r.outcome}, finished on {r.cloud_node or '-'}"
        return ""

    _mark(res, open_then, why)


def _link(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


async def _is(address: str, status: str) -> bool:
    return await health_of(address, 0.5) == status


async def _true(value: bool) -> bool:
    return value


async def slow_consumer(env: Env, res: FaultResult, delay_s: float = 0.25) -> None:
    """Two clients that read the token stream slowly, beside the normal load."""
    slow: list[Record] = []

    async def fault(r: FaultResult) -> None:
        r.fault_at = time.time()
        addr = env.address(EDGE)
        got = await asyncio.gather(
            *(env.load.one(EDGE, addr, read_delay_s=delay_s) for _ in range(2))
        )
        slow.extend(got)
        r.healed_at = time.time()

    await _loaded(env, fault, res)
    _mark(res, slow, lambda r: f"slow consumer ({delay_s} s a read): {r.outcome}")


async def disk_full(env: Env, res: FaultResult) -> None:
    """Requests to the edge whose log is /dev/full (every log write fails with ENOSPC)."""

    async def fault(r: FaultResult) -> None:
        r.fault_at = time.time()
        await asyncio.sleep(env.outage_s)
        r.healed_at = time.time()

    await _loaded(env, fault, res, edge=FULL_EDGE)
    fds = Path(f"/proc/{env.cluster.pid(FULL_EDGE)}/fd")
    full = sorted(int(f.name) for f in fds.iterdir() if _link(f) == "/dev/full")
    target = f"/dev/full (descriptors {full})" if full else "not /dev/full"
    res.extra["log_device"] = target
    recs = [r for r in env.load.records if r.scenario == env.load.scenario]
    _mark(res, recs, lambda r: f"served by {FULL_EDGE}, log on {target}: {r.outcome}")


SCENARIOS: dict[str, Callable[[Env, FaultResult], Awaitable[None]]] = {
    "kill9_cloud": kill_cloud,
    "kill9_all_clouds": lambda env, res: kill_cloud(env, res, CLOUDS),
    "blackhole_link": blackhole_link,
    "sigstop_cloud": freeze_cloud,
    "restart_coordinator": restart_coordinator,
    "graceful_stop_cloud": graceful_stop,
    "slow_consumer": slow_consumer,
    "disk_full_logs": disk_full,
}
