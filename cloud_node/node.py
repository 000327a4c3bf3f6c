"""Starting a cloud node: load the target, serve gRPC, register with the coordinator."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from cloud_node.costs import calibrate
from cloud_node.engine import EngineConfig, VerifyEngine
from cloud_node.prometheus import instrument
from cloud_node.service import CloudServicer
from cloud_node.steps import StepService
from cloud_node.vllm_config import VllmSettings
from models.base import CausalLM, Tokenizer
from models.fingerprint import fingerprint
from models.reasoning.protocols import StepScorer
from node_runtime.emulation import EmulatedLM, emulate, emulation_values
from node_runtime.lifecycle import RateWindow, run_node
from node_runtime.metrics import MetricsServer, NodeMetrics
from node_runtime.serving import DrainGate, aio_server, begin_drain, bind, drain, log_event
from node_runtime.telemetry import Reading
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

log = logging.getLogger("tandem.cloud")


@dataclass(frozen=True)
class CloudConfig:
    """A cloud node process."""

    model: str = "target"  # model spec for models.loader.load_lm
    host: str = "127.0.0.1"  # address to bind
    port: int = 0  # 0 picks a free port
    node_id: str = ""  # empty: cloud-<port>
    coordinator: str = ""  # coordinator address; empty: do not register
    torch_threads: int = 1  # intra-op threads of the target (2-core machines share with edges)
    engine: EngineConfig = field(default_factory=EngineConfig)  # sessions, batching, limits
    scorers: tuple[str, ...] = ("prm", "judge")  # step scorers served; the first is the default
    device: str = "cpu"  # device profile to emulate (node_runtime.profiles); "cpu": none
    experts: str = ""  # MoE checkpoint whose experts this node serves (cloud_node.experts)
    metrics_port: int = -1  # Prometheus /metrics over HTTP on this port; -1: none, 0: a free one
    metrics_host: str = "127.0.0.1"  # address /metrics binds
    # onnxruntime execution providers to try first for ONNX graphs (the PRM); CPU is last
    onnx_providers: tuple[str, ...] = ()
    # what runs the target: "tandem" (this node's own loop) or "vllm" (vLLM's engine in process;
    # --model is then a Hugging Face directory; needs scripts/setup-vllm, see docs/vllm.md)
    serving_engine: str = "tandem"
    vllm: VllmSettings = field(default_factory=VllmSettings)  # with serving_engine "vllm" only
    drain_s: float = 8.0  # graceful stop: longest wait for the calls in progress to finish

    def __post_init__(self) -> None:
        if self.serving_engine not in ("tandem", "vllm"):
            raise ValueError(f"engine must be tandem or vllm, got {self.serving_engine!r}")


@dataclass
class CloudNode:
    """A running cloud node."""

    server: object
    address: str
    engine: VerifyEngine
    servicer: CloudServicer
    gate: DrainGate | None = None  # counts calls in progress; refuses new ones once draining
    health: health.aio.HealthServicer | None = None  # grpc.health.v1, SERVING while it serves

    async def begin_drain(self) -> None:
        """Report NOT_SERVING and refuse new calls (UNAVAILABLE); those in progress go on."""
        await begin_drain(self.health, self.gate)

    async def drain(self, timeout_s: float) -> bool:
        """``begin_drain``, then wait up to ``timeout_s`` for the calls in progress to end."""
        return await drain(self.health, self.gate, timeout_s, "cloud")

    async def stop(self, grace: float = 1.0) -> None:
        """Stop serving, then stop the step service and the engine."""
        await self.server.stop(grace)  # type: ignore[attr-defined]
        if self.servicer.steps is not None:
            await self.servicer.steps.stop()
        await self.engine.stop()


async def start_cloud(
    lm: CausalLM,
    eos_id: int | None,
    config: CloudConfig = CloudConfig(),
    tokenizer: Tokenizer | None = None,
) -> CloudNode:
    """Serve ``lm`` as a cloud node on the running loop; with a tokenizer, steps too."""
    engine = VerifyEngine(lm, config.engine)
    engine.start()
    gate = DrainGate()
    server = aio_server(gate=gate)
    address = bind(server, config.host, config.port)
    node_id = config.node_id or f"cloud-{address}"
    steps = build_steps(engine, lm, tokenizer, config.scorers) if tokenizer else None
    servicer = CloudServicer(engine, node_id, eos_id, steps, tokenizer)
    pb_grpc.add_CloudServicer_to_server(servicer, server)
    if config.experts:
        from cloud_node.experts import add_experts

        add_experts(server, config.experts)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    emulated = lm.profile.name if isinstance(lm, EmulatedLM) else None
    log_event(
        log, "cloud_listening", address=address, node_id=node_id, model=lm.name, emulated=emulated
    )
    return CloudNode(server, address, engine, servicer, gate, health_servicer)


def build_steps(
    engine: VerifyEngine, lm: CausalLM, tok: Tokenizer, names: tuple[str, ...]
) -> StepService | None:
    """Step scoring and writing: the bundled PRM, and the target as a 0-9 judge."""
    from models.reasoning.proposer import LMStepProposer
    from models.reasoning.scorers import JudgeScorer, PRMScorer

    scorers: dict[str, StepScorer] = {}
    for name in names:
        if name == "prm":
            scorers["prm"] = PRMScorer()
        elif name == "judge":
            scorers["judge"] = JudgeScorer(lm, tok)
        else:
            raise ValueError(f"unknown scorer {name!r}; use prm or judge")
    try:
        writer = LMStepProposer(lm, tok)
    except ValueError:  # a tokenizer without the task's delimiter token: score only
        writer = None
    return StepService(engine, scorers, writer) if scorers else None


def model_info(lm: CausalLM, backend: str) -> pb.ModelInfo:
    """What the coordinator is told about a model."""
    params = int(getattr(lm, "parameters", 0) or 0)
    return pb.ModelInfo(name=lm.name, parameters=params, vocab_size=lm.vocab_size, backend=backend)


async def run_cloud(config: CloudConfig, ready_file: Path | None = None) -> None:
    """Process entry: calibrate, serve, publish telemetry, register; stop on SIGTERM/SIGINT."""
    if config.serving_engine == "vllm":
        from cloud_node.vllm_node import run_vllm_cloud

        await run_vllm_cloud(config, ready_file)
        return
    import torch

    from models.loader import load_lm  # loads torch only in the cloud process
    from models.providers import set_providers

    set_providers(config.onnx_providers)
    torch.set_num_threads(config.torch_threads)
    lm, tok = load_lm(config.model)
    lm = emulate(lm, config.device)  # every call still runs; its wall time becomes the device's
    bundled = not config.model.startswith("hf")
    scorers = config.scorers if bundled else tuple(n for n in config.scorers if n != "prm")
    node = await start_cloud(lm, tok.eos_id, replace(config, scorers=scorers), tok)
    probe = [tok.eos_id or 0] * 8
    await node.engine.run_model(lambda: calibrate(lm, node.engine.costs, probe))
    info = pb.NodeInfo(
        node_id=node.servicer.node_id,
        role=pb.ROLE_CLOUD,
        address=node.address,
        models=[model_info(lm, config.model.split(":", 1)[0])],
        device=config.device,
        max_sessions=config.engine.max_sessions,
        tokenizer=fingerprint(tok),
    )
    http = None
    if config.metrics_port >= 0:
        metrics = NodeMetrics("cloud", node.servicer.node_id)
        instrument(metrics, node.engine, lm.name)
        http = await start_metrics(metrics, config)
    await serve_until_stopped(node, LoadProbe(node.engine), info, config, ready_file, http)


async def start_metrics(metrics: NodeMetrics, config: CloudConfig) -> MetricsServer:
    """Serve ``metrics`` at ``/metrics`` on the configured port."""
    http = MetricsServer(metrics, config.metrics_host, config.metrics_port)
    log_event(log, "metrics_listening", address=await http.start())
    return http


async def serve_until_stopped(
    node: CloudNode,
    probe: LoadProbe,
    info: pb.NodeInfo,
    config: CloudConfig,
    ready_file: Path | None,
    http: MetricsServer | None,
) -> None:
    """Publish telemetry and register until SIGTERM/SIGINT; then report NOT_SERVING, deregister,
    drain the calls in progress, and stop ``/metrics`` and the node (either engine)."""

    async def stop_drained() -> None:  # deregistered by now: wait for the work in progress
        await node.drain(config.drain_s)
        if http is not None:
            await http.stop()
        await node.stop()

    await run_node(
        info,
        "cloud",
        config.coordinator,
        probe.heartbeat,
        probe.reading,
        stop_drained,
        ready_file,
        node.begin_drain,
    )


class LoadProbe:
    """The node's load as heartbeats and telemetry report it.

    Each consumer has its own rate window (a sample restarts the window it is taken from), and
    the busy fraction is measured from the model thread's busy time, the running call included,
    and kept in [0, 1].
    """

    def __init__(self, engine: VerifyEngine, clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self._heartbeat = RateWindow(clock=clock)
        self._telemetry = RateWindow(clock=clock)

    def heartbeat(self) -> pb.NodeLoad:
        """The load a heartbeat carries: busy fraction since the previous heartbeat."""
        e = self.engine
        return pb.NodeLoad(
            active_sessions=len(e.sessions),
            queue_depth=e.queue_depth,
            busy_fraction=self._heartbeat.busy_fraction("busy_s", e.busy_seconds()),
            tokens_per_s=self._heartbeat.rate("tokens", self._produced()),
        )

    def reading(self) -> Reading:
        """A telemetry sample: rates since the previous sample."""
        e = self.engine
        return Reading(
            active_sessions=len(e.sessions),
            queue_depth=e.queue_depth,
            busy_fraction=self._telemetry.busy_fraction("busy_s", e.busy_seconds()),
            tokens_per_s=self._telemetry.rate("tokens", self._produced()),
            extra={**e.costs.figures(), **emulation_values(e.lm)},
        )

    def _produced(self) -> int:
        # tokens the target produced: generated, plus kept drafts and one token per verify round
        st = self.engine.stats
        return st.generated_tokens + st.accepted + st.rounds
