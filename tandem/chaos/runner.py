"""Start the chaos cluster (real processes, the link emulator on the edge's routes) and run every
fault scenario, repeated and interleaved, then the timed properties."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import socket
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulations.link.proxy import LinkProxy, ProxyConfig
from tandem.chaos.cluster import ChaosCluster
from tandem.chaos.faults import (
    CLOUDS,
    EDGE,
    FULL_EDGE,
    SCENARIOS,
    Env,
    FaultResult,
    metric,
    sessions_idle,
    wait_for,
)
from tandem.chaos.load import Load
from tandem.chaos.timings import cancel_timings, http_auth


@dataclass(frozen=True)
class ChaosConfig:
    """One run of the chaos suite."""

    workdir: Path  # node logs and ready files
    scenarios: tuple[str, ...] = tuple(SCENARIOS)  # which faults, in turn
    repeats: int = 3  # every scenario this many times, interleaved
    clients: int = 4  # concurrent clients on the loaded edge
    outage_s: float = 6.0  # how long a fault lasts before it is healed
    cancels: int = 10  # cancellations timed
    max_new: int = 48  # tokens a request asks for
    deadline_s: float = 30.0  # deadline of every request


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_cluster(
    cluster: ChaosCluster, stack: ExitStack, workdir: Path
) -> tuple[dict[str, Any], str, str]:
    """Coordinator, two clouds, the loaded edge (each cloud behind its own emulated link) and the
    edge whose log is /dev/full. Returns the links, the edge's API address and its key."""
    coord = cluster.launch("coordinator", "coordinator")
    links: dict[str, Any] = {}
    routes: list[str] = []
    for name in CLOUDS:
        cloud = cluster.launch(
            "cloud", name, "--model", "target", "--coordinator", coord.address, "--node-id", name
        )
        link = LinkProxy(ProxyConfig(upstream=cloud.address)).start_in_thread()
        stack.callback(link.stop)
        links[name] = link
        routes += ["--route", f"{cloud.address}={link.address}"]
    # the key stays out of the run's folder (its logs and reports are kept), and is removed
    keys = Path(tempfile.mkdtemp(prefix="tandem-chaos-key-"))
    stack.callback(shutil.rmtree, keys, True)
    key_file = keys / "api.key"
    key = secrets.token_urlsafe(24)
    key_file.write_text(key)
    api_port = _free_port()
    common = ("--coordinator", coord.address)
    cluster.launch(
        "edge",
        EDGE,
        *common,
        "--node-id",
        EDGE,
        *routes,
        "--api-port",
        str(api_port),
        "--api-key-file",
        str(key_file),
    )
    cluster.launch("edge", FULL_EDGE, *common, "--node-id", FULL_EDGE, log_to=Path("/dev/full"))
    return links, f"127.0.0.1:{api_port}", key


async def run_scenarios(env: Env, cfg: ChaosConfig, progress: Any = None) -> list[FaultResult]:
    """Every scenario ``repeats`` times, in turns (A, B, C, A, B, C, ...)."""
    out: list[FaultResult] = []
    for rep in range(cfg.repeats):
        for name in cfg.scenarios:
            if progress is not None:
                progress.set_postfix_str(f"{name} #{rep}")
            res = FaultResult(name, rep, 0.0)
            await SCENARIOS[name](env, res)
            out.append(res)
            # the next scenario starts on a quiet cluster: no session left from this one
            res.extra["idle_after_s"] = await wait_for(lambda: sessions_idle(env), 20.0)
            res.extra["edges_idle_after_s"] = await wait_for(lambda: _edges_idle(env), 20.0)
            if progress is not None:
                progress.update(1)
    return out


def run_chaos(cfg: ChaosConfig, progress: Any = None) -> dict[str, Any]:
    """Start the cluster, run the scenarios and the timed properties; every record and result."""
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        cluster = stack.enter_context(ChaosCluster(cfg.workdir / "nodes"))
        links, api, key = start_cluster(cluster, stack, cfg.workdir)
        load = Load(cfg.max_new, cfg.deadline_s)
        env = Env(cluster, load, links, cfg.clients, cfg.outage_s)

        async def main() -> dict[str, Any]:
            await wait_for(lambda: _warm(env), 30.0)
            faults = await run_scenarios(env, cfg, progress)
            cancels = await cancel_timings(env, cfg.cancels)
            http = await http_auth(api, key, load._question())
            return {"faults": faults, "cancels": cancels, "http": http}

        got = asyncio.run(main())
    return {**got, "records": load.records}


async def _edges_idle(env: Env) -> bool:
    """Whether no edge holds a request (its Metrics RPC says so)."""
    for name in (EDGE, FULL_EDGE):
        if await metric(env.address(name), "active_requests", edge=True) != 0:
            return False
    return True


async def _warm(env: Env) -> bool:
    """One request through the loaded edge completes (the clouds are registered and planned)."""
    rec = await env.load.one(EDGE, env.address(EDGE))
    env.load.records.remove(rec)
    return rec.outcome == "ok"


def summarize_faults(results: Sequence[FaultResult]) -> dict[str, dict[str, Any]]:
    """Per scenario: runs, requests, hits and the detection figures."""
    rows: dict[str, dict[str, Any]] = {}
    for r in results:
        row = rows.setdefault(
            r.scenario, {"runs": 0, "requests": 0, "hit": 0, "detect_s": [], "emulated": r.emulated}
        )
        row["runs"] += 1
        row["requests"] += r.requests
        row["hit"] += len(r.hit)
        if r.detect_s is not None:
            row["detect_s"].append(r.detect_s)
    return rows
