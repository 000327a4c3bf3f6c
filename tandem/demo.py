"""The main job: a local cluster runs held-out problems in every mode and compares them.

With ``devices`` the nodes emulate device profiles (``--device``), with ``link`` a link emulator
sits between the edges and the cloud; the run then also drafts ahead (pipelined) and lets the
coordinator plan (planned), and says which mode wins there and why (``tandem.demo_split``).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from models import task
from models.metrics import acceptance_rate, mean_accepted_length
from models.onnx_lm import is_export_dir
from models.prompts import dialogue, load_prompts
from node_runtime.kinds import Mode
from node_runtime.profiles import get_profile
from node_runtime.serving import aio_channel
from simulations.link.profiles import UnknownProfileError
from simulations.link.profiles import get_profile as get_link
from simulations.link.proxy import LinkProxy, ProxyConfig
from tandem.cluster import LocalCluster, Proc
from tandem.demo_split import Emulation, Totals, describe, split, verdict
from tandem.report import bar_plot, print_table
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

MODES = {m.value: m.to_wire() for m in (Mode.CLOUD_ONLY, Mode.EDGE_ONLY, Mode.SPECULATION)}
# Modes beyond the plain three: speculation drafting ahead, and the coordinator's own choice.
MODES |= {"pipelined": pb.MODE_TOKEN_SPECULATION, "planned": pb.MODE_UNSPECIFIED}
PLAIN_MODES = ("cloud-only", "edge-only", "speculation")  # what `tandem demo` runs by default
# Asked when a model is a real checkpoint (hf:...): its tokenizer has no use for the synthetic
# task's questions, and its answers to them would mean nothing.
TEXT_PROMPTS = tuple(dialogue(p) for p in load_prompts())  # the bundled set (models.prompts)


@dataclass(frozen=True)
class DemoConfig:
    """One demo run."""

    problems: int = 40  # held-out problems (bundled models) per mode
    target: str = "target"  # cloud model spec (models.loader)
    drafter: str = "drafter-int8"  # edge model spec
    edges: int = 2  # edge node processes
    k: int = 4  # starting draft length
    k_policy: str = "heuristic"  # fixed, heuristic or rtt
    temperature: float = 0.0  # 0: greedy
    max_new_tokens: int = 48  # per request
    out_dir: Path = Path("runs/demo")  # JSON, plot and node logs
    modes: tuple[str, ...] = PLAIN_MODES  # which modes to run; emulated runs add the others
    devices: tuple[str, str] | None = None  # (edge profile, cloud profile) the nodes emulate
    link: str = ""  # link profile between edges and cloud (simulations.link); "": loopback
    pipelined: bool = False  # also run speculation drafting ahead

    @property
    def bundled(self) -> bool:
        """Both models are the bundled task models (or their exports), not real checkpoints."""
        return not any(_real_checkpoint(s) for s in (self.target, self.drafter))

    @property
    def emulated(self) -> bool:
        """Devices or the link are emulated."""
        return self.devices is not None or bool(self.link)

    def run_modes(self) -> list[str]:
        """The modes this run compares: every mode when emulating, else those asked for."""
        if self.emulated:
            return list(MODES)
        return list(self.modes) + (["pipelined"] if self.pipelined else [])

    def emulation(self) -> Emulation:
        """The emulated devices and link, checked: an edge profile, a cloud one, a known link."""
        edge, cloud = self.devices or ("", "")
        for name, role in ((edge, "edge"), (cloud, "cloud")):
            if name and get_profile(name).role != role:
                raise ValueError(f"devices: {name} is not an {role} profile (see tandem profiles)")
        try:
            rtt = get_link(self.link).spec.rtt_ms if self.link else 0.0
        except UnknownProfileError as err:
            raise ValueError(f"link: {err}") from None
        return Emulation(edge, cloud, self.link, rtt)


@dataclass
class ModeStats:
    """Totals of one mode."""

    requests: int = 0
    correct: int = 0
    tokens: int = 0
    wall_s: float = 0.0
    drafted: int = 0
    accepted: int = 0
    rounds: int = 0
    cloud_cpu_s: float = 0.0
    degraded: int = 0
    edge_model_s: float = 0.0
    ahead_rounds: int = 0  # rounds drafted ahead (pipelined)
    pipelined_rounds: int = 0  # rounds sent as drafted ahead
    chosen: dict[str, int] = field(default_factory=dict)  # mode that finished, per request
    samples: list[dict[str, Any]] = field(default_factory=list)

    def totals(self) -> Totals:
        """What the per-round split needs."""
        return Totals(
            self.requests, self.tokens, self.wall_s, self.rounds, self.drafted, self.edge_model_s
        )

    def summary(self, bundled: bool) -> dict[str, float | None]:
        return {
            "accuracy": self.correct / self.requests if bundled and self.requests else None,
            "tokens_per_s": self.tokens / self.wall_s if self.wall_s else 0.0,
            "acceptance_rate": acceptance_rate(self.accepted, self.drafted)
            if self.drafted
            else None,
            "mean_accepted_length": (
                mean_accepted_length(self.accepted, self.rounds) if self.rounds else None
            ),
            "cloud_ms_per_token": 1e3 * self.cloud_cpu_s / self.tokens if self.tokens else 0.0,
            "requests": float(self.requests),
            "degraded": float(self.degraded),
        }


def _wait_for_nodes(coordinator: str, edges: int, timeout_s: float = 30.0) -> list[pb.NodeInfo]:
    """The registered nodes, once a cloud and every edge are in."""

    async def poll() -> list[pb.NodeInfo]:
        async with aio_channel(coordinator) as ch:
            stub = pb_grpc.CoordinatorStub(ch)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                nodes = list((await stub.ListNodes(pb.ListNodesRequest(), timeout=2)).nodes)
                roles = [n.role for n in nodes]
                if roles.count(pb.ROLE_CLOUD) >= 1 and roles.count(pb.ROLE_EDGE) >= edges:
                    return nodes
                await asyncio.sleep(0.1)
            raise TimeoutError("the cloud and edge nodes did not all register with the coordinator")

    return asyncio.run(poll())


def _tokenizer_note(nodes: list[pb.NodeInfo]) -> str | None:
    """Why token speculation cannot run here (edge and cloud tokenizers differ), or None."""
    edge = {n.tokenizer for n in nodes if n.role == pb.ROLE_EDGE}
    cloud = {n.tokenizer for n in nodes if n.role == pb.ROLE_CLOUD}
    if edge <= cloud and len(cloud) == 1:
        return None
    return (
        f"speculation skipped: the drafter's tokenizer ({', '.join(sorted(edge))}) is not the "
        f"target's ({', '.join(sorted(cloud))}); token ids mean different words on each side"
    )


async def _run_mode(
    edges: list[str], mode: str, cfg: DemoConfig, prompts: list[tuple[str, task.Problem | None]]
) -> ModeStats:
    stats = ModeStats()
    bar = tqdm(total=len(prompts), desc=f"{mode:>12}", leave=True)
    channels = [aio_channel(a) for a in edges]

    async def worker(i: int) -> None:
        stub = pb_grpc.EdgeStub(channels[i])
        for j in range(i, len(prompts), len(edges)):
            text, problem = prompts[j]
            planned = mode == "planned"  # the plan's mode and k (fixed, revised with the plan)
            req = pb.SolveRequest(
                request_id=f"{mode}-{j}",
                prompt=text,
                mode=MODES[mode],
                max_new_tokens=cfg.max_new_tokens,
                draft_length=0 if planned else cfg.k,
                k_policy="" if planned else cfg.k_policy,
                sampling=pb.Sampling(temperature=cfg.temperature, seed=j),
                pipelined=mode == "pipelined",
            )
            r = await stub.Solve(req, timeout=120)
            a = r.account
            stats.edge_model_s += a.edge_model_s
            stats.ahead_rounds += a.ahead_rounds
            stats.pipelined_rounds += a.pipelined_rounds
            name = pb.Mode.Name(r.mode) + (" pipelined" if a.ahead_rounds else "")
            stats.chosen[name] = stats.chosen.get(name, 0) + 1
            ok = problem is not None and task.is_correct(problem, r.text)
            stats.requests += 1
            stats.correct += int(ok)
            stats.tokens += a.generated_tokens
            stats.wall_s += a.wall_s
            stats.drafted += a.drafted_tokens
            stats.accepted += a.accepted_tokens
            stats.rounds += a.verify_rounds
            stats.cloud_cpu_s += a.cloud_model_cpu_s
            stats.degraded += int(r.degraded)
            stats.samples.append({"id": j, "edge": edges[i], "text": r.text, "correct": ok})
            bar.update()

    try:
        await asyncio.gather(*(worker(i) for i in range(len(edges))))
    finally:
        bar.close()
        for ch in channels:
            await ch.close()
    return stats


def _start_cloud(cluster: LocalCluster, cfg: DemoConfig) -> tuple[Proc, Proc]:
    """The coordinator and the cloud, which emulates its device when asked."""
    coord = cluster.start("coordinator", "coordinator")
    cloud_device = cfg.devices[1] if cfg.devices else ""
    emulate = ["--device", cloud_device] if cloud_device else []
    cloud = cluster.start(
        "cloud", "cloud-0", "--model", cfg.target, "--coordinator", coord.address, *emulate
    )
    return coord, cloud


def _start_edges(
    cluster: LocalCluster, cfg: DemoConfig, coord: Proc, cloud: Proc, via: str
) -> list[Proc]:
    """The edges, each emulating its device when asked, dialling the cloud through ``via`` (the
    link emulator's address) when it is set."""
    args = ["--model", cfg.drafter, "--coordinator", coord.address]
    if cfg.devices:
        args += ["--device", cfg.devices[0]]
    if via:
        args += ["--route", f"{cloud.address}={via}"]
    return [cluster.start("edge", f"edge-{i}", *args) for i in range(cfg.edges)]


def _infeasible(cloud: str, edges: list[str]) -> dict[str, float]:
    """Model calls each node could not pad to its profile (slower here than the device)."""

    async def ask() -> dict[str, float]:
        out = {}
        for address, stub in [(cloud, pb_grpc.CloudStub), *((e, pb_grpc.EdgeStub) for e in edges)]:
            async with aio_channel(address) as ch:
                reply = await stub(ch).Metrics(pb.MetricsRequest(), timeout=5)
                out[reply.node_id or address] = reply.values.get("emulated_infeasible_calls", 0.0)
        return out

    return asyncio.run(ask())


def _real_checkpoint(spec: str) -> bool:
    """hf:..., or an onnx: export of a real checkpoint (with its own tokenizer)."""
    return spec.startswith("hf:") or (spec.startswith("onnx:") and is_export_dir(spec[5:]))


def _prompts(cfg: DemoConfig) -> list[tuple[str, task.Problem | None]]:
    if cfg.bundled:
        return [(p.question, p) for p in task.generate(cfg.problems, task.HELDOUT_SEED)]
    return [(TEXT_PROMPTS[i % len(TEXT_PROMPTS)], None) for i in range(cfg.problems)]


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Start the cluster, run every mode, print the table, write JSON and a plot."""
    if cfg.problems < 1 or cfg.edges < 1:
        raise ValueError("need at least one problem and one edge node")
    unknown = set(cfg.modes) - set(MODES)
    if unknown:
        raise ValueError(f"unknown modes {sorted(unknown)}; known: {list(MODES)}")
    emu = cfg.emulation()
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    prompts = _prompts(cfg)
    stats: dict[str, ModeStats] = {}
    infeasible: dict[str, float] = {}
    with LocalCluster(cfg.out_dir / "nodes") as cluster:
        coord, cloud = _start_cloud(cluster, cfg)
        link = None
        if cfg.link:
            spec = get_link(cfg.link).spec
            link = LinkProxy(ProxyConfig(upstream=cloud.address), spec).start_in_thread()
        try:
            edges = _start_edges(cluster, cfg, coord, cloud, link.address if link else "")
            modes = cfg.run_modes()
            note = _tokenizer_note(_wait_for_nodes(coord.address, cfg.edges))
            token_modes = {"speculation", "pipelined"} & set(modes)
            if note is not None and token_modes:
                print(note)
                modes = [m for m in modes if m not in token_modes]
            addresses = [e.address for e in edges]
            for mode in modes:
                stats[mode] = asyncio.run(_run_mode(addresses, mode, cfg, prompts))
            if cfg.devices:
                infeasible = _infeasible(cloud.address, addresses)
        finally:
            if link is not None:
                link.stop()
    return _report(cfg, emu, stats, infeasible)


def _report(
    cfg: DemoConfig, emu: Emulation, stats: dict[str, ModeStats], infeasible: dict[str, float]
) -> dict[str, Any]:
    """Print the table (and, emulated, the per-round split and the verdict); write JSON, plot."""
    results: dict[str, Any] = {
        m: {**st.summary(cfg.bundled), "samples": st.samples[:5]} for m, st in stats.items()
    }
    columns = [
        "accuracy",
        "tokens_per_s",
        "acceptance_rate",
        "mean_accepted_length",
        "cloud_ms_per_token",
    ]
    report: dict[str, Any] = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "modes": results,
    }
    if cfg.emulated:
        splits = {m: split(m, st.totals(), emu) for m, st in stats.items()}
        for m, st in stats.items():
            results[m] |= {
                "ms_per_token": splits[m].get("ms_per_token"),
                "cloud_device_ms_per_token": splits[m].get("cloud_device_ms_per_token"),
                "chosen": st.chosen,
            }
        columns.insert(1, "ms_per_token")
        columns.append("cloud_device_ms_per_token")
        why = verdict(splits, emu)
        report |= {"emulated": emu.label, "split": splits, "verdict": why}
        report["infeasible_calls"] = infeasible
        print(emu.label)
    (cfg.out_dir / "demo.json").write_text(json.dumps(report, indent=2))
    print_table("mode", {m: {c: r[c] for c in columns} for m, r in results.items()}, columns)
    if cfg.emulated:
        _print_split(report, stats)
    title = f"Tandem demo: {cfg.target} verifies {cfg.drafter}"
    # emulated, the cloud's own CPU time says nothing of the device: plot the profile's
    shown = ["ms_per_token", "cloud_device_ms_per_token"] if cfg.emulated else []
    bar_plot(
        {m: {c: r[c] for c in columns} for m, r in results.items()},
        ["accuracy", *(shown or ["tokens_per_s", "cloud_ms_per_token"])],
        cfg.out_dir / "demo.png",
        title=f"{title}\n{emu.label}" if emu.label else title,
    )
    print(f"wrote {cfg.out_dir / 'demo.json'} and {cfg.out_dir / 'demo.png'}")
    return report


def _print_split(report: dict[str, Any], stats: dict[str, ModeStats]) -> None:
    """Where each mode's time goes, what the plan chose, and the verdict."""
    print("\nper-round time split (draft: the edge's accounts; network: the link profile;")
    print("verify and decode: the cloud profile at batch 1)")
    for m, s in report["split"].items():
        if s:
            print(describe(m, s))
    if "planned" in stats:
        chosen = ", ".join(f"{n} x{c}" for n, c in sorted(stats["planned"].chosen.items()))
        print(f"the coordinator's plans ran: {chosen}")
    slow = {n: c for n, c in report["infeasible_calls"].items() if c}
    if slow:
        print(f"calls slower here than their profile (not emulated faithfully): {slow}")
    print("\n" + report["verdict"])
