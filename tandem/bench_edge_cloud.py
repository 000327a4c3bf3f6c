"""``tandem bench edge-cloud``: every policy over device pairs and link profiles, real processes.

For each device pair: a coordinator, a cloud (``--device`` the pair's cloud profile, the bundled
target) and an edge (``--device`` the pair's edge profile, the bundled int8 drafter) start as
processes, with the link emulator between edge and cloud. Every model call runs for real (tokens
and acceptance are the bundled pair's) and is padded to its profile's time. For each link profile
the proxy is reconfigured (nodes restart only when the pair changes) and every policy runs the
same problems, ``repeats`` times, interleaved. On the first pair, a capacity phase runs many
emulated edge devices at once (``tandem.edge_cloud_load``) and reads the cloud's emulated
device-seconds from its Metrics.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from tqdm import tqdm

from models import task
from node_runtime.kinds import Mode
from node_runtime.serving import aio_channel
from simulations.link.proxy import LinkProxy, ProxyConfig
from simulations.link.threaded import ThreadedLink
from tandem.cluster import LocalCluster, Proc
from tandem.edge_cloud_grid import (
    CLOUD_BATCH,
    POLICIES,
    DevicePair,
    EdgeCloudConfig,
    Policy,
    emulated_label,
    link_rtt_ms,
    link_spec,
    run_count,
)
from tandem.edge_cloud_report import build_report, plot, print_report
from tandem.repeats import interleaved
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

GRID_SEED = task.HELDOUT_SEED + 5  # problems of the grid
WARM_SEED = task.HELDOUT_SEED + 11  # problems that warm a pair's nodes up (not measured)


def _request(policy: Policy, question: str, max_new: int) -> pb.SolveRequest:
    mode = policy.mode.to_wire() if policy.mode is not None else pb.MODE_UNSPECIFIED
    return pb.SolveRequest(
        prompt=question,
        mode=mode,
        max_new_tokens=max_new,
        draft_length=4 if policy.mode is Mode.SPECULATION else 0,  # adaptive: the plan's k
        k_policy=policy.k_policy.value if policy.k_policy is not None else "",
        objective=pb.OBJECTIVE_LATENCY,
        pipelined=policy.pipelined,
    )


async def policy_run(
    edge: str, policy: Policy, problems: Sequence[task.Problem], max_new: int
) -> dict[str, Any]:
    """The problems one after another under ``policy``: wall time per token and the accounts."""
    out: dict[str, Any] = dict.fromkeys(
        ("tokens", "wall_s", "drafted", "accepted", "rounds", "ahead_rounds", "pipelined_rounds"),
        0,
    )
    out.update(degraded=0, correct=0, modes={})
    async with aio_channel(edge) as ch:
        stub = pb_grpc.EdgeStub(ch)
        for p in problems:
            t0 = time.perf_counter()
            r = await stub.Solve(_request(policy, p.question, max_new), timeout=600)
            out["wall_s"] += time.perf_counter() - t0
            a = r.account
            out["tokens"] += len(r.tokens)
            out["drafted"] += a.drafted_tokens
            out["accepted"] += a.accepted_tokens
            out["rounds"] += a.verify_rounds
            out["ahead_rounds"] += a.ahead_rounds
            out["pipelined_rounds"] += a.pipelined_rounds
            out["degraded"] += r.degraded
            out["correct"] += task.is_correct(p, r.text)
            mode = Mode.from_wire(r.mode)
            name = (mode.value if mode else "unspecified") + ("+ahead" if a.ahead_rounds else "")
            out["modes"][name] = out["modes"].get(name, 0) + 1
    out["ms_per_token"] = 1e3 * out["wall_s"] / max(out["tokens"], 1)
    return out


async def node_values(address: str, edge: bool) -> dict[str, float]:
    """A node's Metrics values."""
    async with aio_channel(address) as ch:
        stub: Any = pb_grpc.EdgeStub(ch) if edge else pb_grpc.CloudStub(ch)
        return dict((await stub.Metrics(pb.MetricsRequest(), timeout=10)).values)


def emulation_counters(values: dict[str, float]) -> dict[str, float]:
    """The emulated device's counters among a node's Metrics values."""
    keys = ("emulated_calls", "emulated_infeasible_calls", "emulated_worst_overshoot_ms")
    return {k: values.get(k, 0.0) for k in (*keys, "emulated_device_s", "emulated_padded_s")}


class PairNodes:
    """One device pair's processes: coordinator, cloud, link emulator, edge."""

    def __init__(self, cluster: LocalCluster, pair: DevicePair, tag: str) -> None:
        self.pair = pair
        coord = cluster.start("coordinator", f"coordinator-{tag}")
        self.cloud: Proc = cluster.start(
            "cloud",
            f"cloud-{tag}",
            *("--model", "target", "--device", pair.cloud, "--coordinator", coord.address),
            *("--max-batch", str(CLOUD_BATCH), "--generate-batch", str(CLOUD_BATCH)),
        )
        self.link: ThreadedLink = LinkProxy(
            ProxyConfig(upstream=self.cloud.address)
        ).start_in_thread()
        self.edge: Proc = cluster.start(
            "edge",
            f"edge-{tag}",
            *("--device", pair.edge, "--coordinator", coord.address),
            *("--route", f"{self.cloud.address}={self.link.address}"),
        )
        self.procs = (coord, self.cloud, self.edge)

    def close(self, cluster: LocalCluster) -> None:
        """Stop the link and the pair's processes (edge first)."""
        self.link.stop()
        for proc in reversed(self.procs):
            cluster.stop(proc)

    def warm_up(self, max_new: int) -> None:
        """A few requests of each kind: the edge learns acceptance and the coordinator hears it."""
        problems = task.generate(2, WARM_SEED)
        for policy in POLICIES:
            asyncio.run(policy_run(self.edge.address, policy, problems, max_new))

    def set_link(self, link: str, settle_s: float, max_new: int) -> None:
        """Reconfigure the proxy, then let RTT estimates catch up: one speculating request (its
        rounds measure the RTT) and ``settle_s`` of probes and telemetry."""
        self.link.set(link_spec(link))
        speculation = next(p for p in POLICIES if p.name == "speculation")
        asyncio.run(
            policy_run(self.edge.address, speculation, task.generate(1, WARM_SEED), max_new)
        )
        time.sleep(settle_s)

    def cell(
        self, problems: Sequence[task.Problem], cfg: EdgeCloudConfig, step: Callable[[str], None]
    ) -> dict[str, list[dict[str, Any]]]:
        """Every policy over ``problems``, ``cfg.repeats`` times, interleaved."""

        def config(policy: Policy) -> Callable[[], dict[str, Any]]:
            def run() -> dict[str, Any]:
                out = asyncio.run(policy_run(self.edge.address, policy, problems, cfg.max_new))
                step(policy.name)
                return out

            return run

        return interleaved({p.name: config(p) for p in POLICIES}, cfg.repeats)

    def counters(self) -> dict[str, dict[str, float]]:
        """Both nodes' emulation counters (calls, infeasible calls, device time)."""
        edge = asyncio.run(node_values(self.edge.address, edge=True))
        cloud = asyncio.run(node_values(self.cloud.address, edge=False))
        return {"edge": emulation_counters(edge), "cloud": emulation_counters(cloud)}

    def capacity(self, cfg: EdgeCloudConfig, step: Callable[[str], None]) -> list[dict[str, Any]]:
        """Every repeat of the capacity phase, each in a load process of its own."""
        out: list[dict[str, Any]] = []
        for rep in range(cfg.repeats):
            cmd = [sys.executable, "-m", "tandem.edge_cloud_load"]
            cmd += ["--cloud", self.cloud.address, "--via", self.link.address]
            cmd += ["--device", self.pair.edge, "--sessions", ",".join(map(str, cfg.sessions))]
            cmd += ["--requests", str(cfg.requests_per_session), "--max-new", str(cfg.max_new)]
            cmd += ["--repeat", str(rep)]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
            if done.returncode != 0:
                raise RuntimeError(
                    f"load generator exited {done.returncode}: {done.stderr[-2000:]}"
                )
            for r in json.loads(done.stdout.strip().splitlines()[-1]):
                out.append({**r, "repeat": rep})
            step("capacity")
        return out


def run_edge_cloud_bench(cfg: EdgeCloudConfig) -> dict[str, Any]:
    """Run the grid and the capacity phase; print, plot and return the report."""
    problems = task.generate(cfg.problems, GRID_SEED)
    rtts = {link: link_rtt_ms(link) for link in cfg.links}
    runs: dict[str, dict[str, dict[str, list[dict[str, Any]]]]] = {}
    counters: dict[str, Any] = {}
    capacity: dict[str, list[dict[str, Any]]] = {}
    t0 = time.perf_counter()
    bar = tqdm(total=run_count(cfg), desc="edge-cloud grid", unit="run")
    with LocalCluster(cfg.out_dir / "nodes") as cluster:
        for i, pair in enumerate(cfg.grid_pairs):
            nodes = PairNodes(cluster, pair, f"p{i}")
            try:
                nodes.warm_up(cfg.max_new)
                runs[pair.name] = {}
                for link in cfg.links:
                    label = emulated_label(pair, link)
                    nodes.set_link(link, cfg.settle_s, cfg.max_new)

                    def step(name: str, label: str = label) -> None:
                        bar.set_postfix_str(f"{label}: {name}", refresh=False)
                        bar.update(1)

                    runs[pair.name][link] = nodes.cell(problems, cfg, step)
                if pair in cfg.capacity_pairs:
                    nodes.set_link(cfg.capacity_link, cfg.settle_s, cfg.max_new)
                    label = emulated_label(pair, cfg.capacity_link)

                    def load_step(_name: str, label: str = label) -> None:
                        bar.set_postfix_str(f"{label}: capacity", refresh=False)
                        bar.update(1)

                    capacity[pair.name] = nodes.capacity(cfg, load_step)
                counters[pair.name] = nodes.counters()
            finally:
                nodes.close(cluster)
    bar.close()
    report = build_report(cfg, runs, rtts, capacity, counters, time.perf_counter() - t0)
    print_report(report)
    plot(report, cfg.out_dir)
    return report
