"""The fleet: N edge devices, M clouds and a coordinator, one SimPy process per request.

Events are per ROUND, never per token: a speculation round is one timeout (the verdict's way
back, the drafts, the way out) and one wait on the cloud's pass; a cloud pass is one timeout
however many rounds and generations share it; cloud-only tokens are counted by the pass loop.

The coordinator is the live one's code: clouds are chosen by ``coordinator.policy.pick_cloud``
over a snapshot of cloud load refreshed every heartbeat, and the adaptive mode asks
``coordinator.costmodel.plan`` with views built by ``coordinator.planner.profile_cloud``.
Each device serves its requests one at a time, in arrival order (its drafter is one device).
"""

from __future__ import annotations

import random
import time
from collections import deque
from dataclasses import replace
from typing import Any

import simpy

from coordinator.costmodel import EdgeView, Request, plan
from coordinator.nodes import ModelSpec, NodeInfo, NodeLoad, NodeStatus, Role, Snapshot
from coordinator.planner import PROFILE_CONTEXT_TOKENS, profile_cloud
from coordinator.policy import pick_cloud
from node_runtime.kinds import Mode
from node_runtime.profiles import draft_ms_per_token, get_profile
from simulations.fleet.acceptance import Acceptance
from simulations.fleet.cloud import CloudLost, SimCloud, profile_cost
from simulations.fleet.config import FleetConfig, SimMode
from simulations.fleet.network import EdgeCost, Link
from simulations.fleet.results import RequestRecord, summarize
from simulations.fleet.workload import Arrival, workload

MODEL = "target"  # the one model every simulated cloud serves


class _Req:
    """One request's progress, kept across failovers."""

    __slots__ = ("a", "done", "ttft", "rounds", "drafted", "accepted", "mode", "clouds")

    def __init__(self, a: Arrival) -> None:
        self.a = a
        self.done = 0  # tokens committed
        self.ttft = -1.0  # when the first token reached the edge (absolute)
        self.rounds = self.drafted = self.accepted = 0
        self.mode = ""
        self.clouds = 0  # clouds it ran on (1 + failovers)


class Fleet:
    """One simulated run of a ``FleetConfig``."""

    def __init__(self, cfg: FleetConfig) -> None:
        self.cfg = cfg
        self.env = simpy.Environment()
        self.rng = random.Random(f"fleet:{cfg.seed}")
        cp, ep = get_profile(cfg.cloud_profile), get_profile(cfg.edge_profile)
        self.cloud_profile, self.edge_profile = cp, ep
        cost = profile_cost(cp, cfg.call_overhead_ms)
        self.clouds = [
            SimCloud(self.env, f"cloud-{i}", cost, cfg.max_batch, cfg.generate_batch)
            for i in range(cfg.clouds)
        ]
        self.by_name = {c.name: c for c in self.clouds}
        self.edge = EdgeCost(ep, cfg.edge_call_overhead_ms)
        self.link = Link(cfg.link, cfg.message_overhead_ms, cfg.link_resets, cfg.rtt_ms)
        self.acceptance = Acceptance(cfg.alpha, cfg.survival)
        self.guess = cfg.guess_right if cfg.guess_right is not None else self.acceptance.alpha
        self.queues: dict[int, deque[Arrival]] = {}  # per busy device, requests waiting
        self.records: list[RequestRecord] = []
        self.edge_busy_s = 0.0
        self.failovers = 0
        self.connected: set[tuple[int, str]] = set()  # (device, cloud) with an open channel
        self.link_resets = 0
        self.snapshot = Snapshot(0.0, ())
        self.epoch = 0
        self._plans: dict[tuple[int, int], Any] = {}

    # ------------------------------------------------------------------ run
    def run(self) -> dict[str, Any]:
        """Simulate and summarize (latencies, utilization, cost, energy, events)."""
        cfg, env = self.cfg, self.env
        arrivals = workload(cfg)
        t0 = time.perf_counter()
        self._refresh()
        env.process(self._arrive(arrivals))
        env.process(self._heartbeats())
        if cfg.fail_cloud_at_s >= 0 and self.clouds:
            env.process(self._lose_cloud(cfg.fail_cloud_at_s))
        self._left = len(arrivals)
        self._all_done = env.event()
        if not arrivals:
            self._all_done.succeed()
        env.run(until=env.any_of([self._all_done, env.timeout(cfg.duration_s + cfg.drain_s)]))
        wall = time.perf_counter() - t0
        events = next(env._eid)  # simpy numbers every scheduled event; the next id counts them
        unfinished = sum(a.time_s <= env.now for a in arrivals) - len(self.records)
        return summarize(self, unfinished, wall, events)

    def _arrive(self, arrivals: list[Arrival]) -> simpy.events.ProcessGenerator:
        env = self.env
        for a in arrivals:
            if a.time_s > env.now:
                yield env.timeout(a.time_s - env.now)
            q = self.queues.get(a.device)
            if q is None:  # idle device: start now
                self.queues[a.device] = deque()
                env.process(self._device(a))
            else:
                q.append(a)

    def _device(self, a: Arrival | None) -> simpy.events.ProcessGenerator:
        """A device runs its requests one after another until its queue is empty."""
        assert a is not None
        device = a.device
        q = self.queues[device]
        while a is not None:
            yield from self._request(a)
            a = q.popleft() if q else None
        del self.queues[device]

    def _heartbeats(self) -> simpy.events.ProcessGenerator:
        """Every heartbeat the coordinator's snapshot of cloud load refreshes (live telemetry
        lags by up to one heartbeat, and so does this)."""
        while True:
            yield self.env.timeout(self.cfg.heartbeat_s)
            self._refresh()

    def _refresh(self) -> None:
        hb, now = self.cfg.heartbeat_s, self.env.now
        nodes = tuple(
            NodeStatus(
                NodeInfo(c.name, Role.CLOUD, c.name, (ModelSpec(MODEL),), self.cfg.cloud_profile),
                NodeLoad(c.active, c.queue_depth, c.busy_since_last(hb)),
                now,
                0.0,
            )
            for c in self.clouds
            if c.alive or now - c.lost_at < 3 * hb  # the registry expires a node after 3 beats
        )
        self.snapshot = Snapshot(now, nodes)
        self.epoch += 1

    def _lose_cloud(self, at: float) -> simpy.events.ProcessGenerator:
        yield self.env.timeout(at)
        self.clouds[0].lost_at = self.env.now
        self.clouds[0].fail()

    # ------------------------------------------------------------------ one request
    def _request(self, a: Arrival) -> simpy.events.ProcessGenerator:
        env, cfg = self.env, self.cfg
        start = env.now
        r = _Req(a)
        mode, k = cfg.mode, cfg.k
        if mode is SimMode.ADAPTIVE:
            mode, k = self._planned(a)
        r.mode = mode.value
        tried: list[str] = []
        while r.done < a.new_tokens and mode is not SimMode.EDGE_ONLY:
            cloud = self._pick(a.device, tried)
            if cloud is None:
                break
            tried.append(cloud.name)
            r.clouds += 1
            if (a.device, cloud.name) not in self.connected:  # a channel's handshakes, once
                self.connected.add((a.device, cloud.name))
                rtt = self.link.up_ms(self.rng) + self.link.down_ms(self.rng)
                yield env.timeout(cfg.connect_rtts * rtt / 1e3)
            try:
                yield from self._on_cloud(r, cloud, mode, k)
            except CloudLost:
                self.failovers += 1
                yield env.timeout(self.link.rtt_ms / 1e3)  # the reset travels back
        degraded = r.done < a.new_tokens and mode is not SimMode.EDGE_ONLY
        if r.done < a.new_tokens:  # edge-only, or every cloud lost: the drafter finishes alone
            ms = self.edge.decode_ms(a.prompt_tokens + r.done, a.new_tokens - r.done)
            self.edge_busy_s += ms / 1e3
            yield env.timeout(ms / 1e3)
            r.ttft = r.ttft if r.ttft >= 0 else env.now
            r.done = a.new_tokens
        self.records.append(
            RequestRecord(
                *(a.time_s, start, env.now, r.ttft, a.new_tokens, a.device, r.mode),
                *(degraded, r.rounds, r.drafted, r.accepted, r.clouds),
            )
        )
        self._left -= 1
        if self._left == 0:
            self._all_done.succeed()

    def _pick(self, device: int, tried: list[str]) -> SimCloud | None:
        info = pick_cloud(self.snapshot, f"edge-{device}", MODEL, tried)
        return self.by_name[info.node_id] if info is not None else None

    def _planned(self, a: Arrival) -> tuple[SimMode, int]:
        """The coordinator's plan for this request (cached per snapshot and length)."""
        key = (self.epoch, a.new_tokens)
        got = self._plans.get(key)
        if got is None:
            self._plans.clear()
            edge = EdgeView(
                "edge",
                draft_ms_per_token=draft_ms_per_token(self.edge_profile, PROFILE_CONTEXT_TOKENS),
                default_rtt_ms=self.link.rtt_ms,
                default_acceptance=self.acceptance.alpha,
            )
            views = []
            for s in self.snapshot.nodes:
                v = profile_cloud(s.info.node_id, self.cloud_profile, s.load.active_sessions)
                views.append(
                    replace(v, busy_fraction=s.load.busy_fraction, queue_depth=s.load.queue_depth)
                )
            p = plan(edge, views, Request(a.new_tokens, allow_pipelined=True))
            if p is None or p.mode is Mode.EDGE_ONLY:
                got = (SimMode.EDGE_ONLY, 0)
            elif p.mode is Mode.CLOUD_ONLY:
                got = (SimMode.CLOUD_ONLY, 0)
            else:
                got = (SimMode.PIPELINED if p.pipelined else SimMode.SPECULATION, p.k)
            self._plans[key] = got
        return got

    def _on_cloud(
        self, r: _Req, cloud: SimCloud, mode: SimMode, k: int
    ) -> simpy.events.ProcessGenerator:
        from simulations.fleet import modes  # the mode bodies, kept apart for size

        if mode is SimMode.CLOUD_ONLY:
            yield from modes.cloud_only(self, r, cloud)
        elif mode in (SimMode.SPECULATION, SimMode.PIPELINED):
            cloud.sessions += 1
            try:
                yield from modes.speculate(self, r, cloud, k, mode is SimMode.PIPELINED)
            finally:
                cloud.sessions -= 1
        elif mode is SimMode.STEP:
            yield from modes.steps(self, r, cloud)
        else:
            yield from modes.prm_search(self, r, cloud)


def simulate(cfg: FleetConfig) -> dict[str, Any]:
    """Run ``cfg`` once; the summary (see ``results.summarize``)."""
    return Fleet(cfg).run()
