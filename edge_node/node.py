"""Starting an edge node: load the drafter (no torch needed), serve gRPC, register."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from edge_node.clouds import CloudDirectory
from edge_node.service import EdgeConfig, EdgeServicer
from models.base import CausalLM, Tokenizer
from models.fingerprint import fingerprint
from node_runtime.emulation import EmulatedLM, emulate, emulation_values
from node_runtime.lifecycle import run_node
from node_runtime.openai_api.backend import EdgeBackend
from node_runtime.openai_api.server import ApiConfig, ApiServer
from node_runtime.serving import DrainGate, aio_server, begin_drain, bind, drain, log_event
from node_runtime.telemetry import Reading
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

log = logging.getLogger("tandem.edge")


@dataclass(frozen=True)
class EdgeNodeConfig:
    """An edge node process."""

    model: str = "drafter-int8"  # model spec for models.loader.load_lm
    host: str = "127.0.0.1"  # address to bind
    port: int = 0  # 0 picks a free port
    node_id: str = ""  # empty: edge-<port>
    coordinator: str = ""  # coordinator address; empty: use `clouds` only
    clouds: tuple[str, ...] = ()  # fixed cloud addresses, tried when the coordinator has none
    routes: tuple[tuple[str, str], ...] = ()  # (cloud address, address to dial instead)
    probe_period_s: float = 1.0  # how often the RTT to every cloud is measured
    device: str = "cpu"  # device profile to emulate and report (node_runtime.profiles); "cpu": none
    edge: EdgeConfig = field(default_factory=EdgeConfig)  # request defaults and limits
    api: ApiConfig = field(default_factory=ApiConfig)  # OpenAI-compatible API and /metrics (HTTP)
    # onnxruntime execution providers to try first (cuda, tensorrt, openvino, ...); CPU is last
    onnx_providers: tuple[str, ...] = ()
    drain_s: float = 8.0  # graceful stop: longest wait for the requests in progress to finish


@dataclass
class EdgeNode:
    """A running edge node."""

    server: object
    address: str
    servicer: EdgeServicer
    gate: DrainGate | None = None  # counts calls in progress; refuses new ones once draining
    health: health.aio.HealthServicer | None = None  # grpc.health.v1, SERVING while it serves

    async def begin_drain(self) -> None:
        """Report NOT_SERVING and refuse new requests (UNAVAILABLE); those in progress go on."""
        await begin_drain(self.health, self.gate)

    async def drain(self, timeout_s: float) -> bool:
        """``begin_drain``, then wait up to ``timeout_s`` for the requests in progress to end."""
        return await drain(self.health, self.gate, timeout_s, "edge")

    async def stop(self, grace: float = 1.0) -> None:
        """Stop serving, close the cloud channels and release the servicer's threads."""
        await self.server.stop(grace)  # type: ignore[attr-defined]
        await self.servicer.clouds.close()
        self.servicer.close()


async def start_edge(lm: CausalLM, tok: Tokenizer, config: EdgeNodeConfig) -> EdgeNode:
    """Serve ``lm`` as an edge node on the running loop."""
    gate = DrainGate()
    server = aio_server(gate=gate)
    address = bind(server, config.host, config.port)
    node_id = config.node_id or f"edge-{address}"
    clouds = CloudDirectory(
        node_id, config.coordinator or None, config.clouds, routes=dict(config.routes)
    )
    servicer = EdgeServicer(node_id, lm, tok, clouds, config.edge)
    pb_grpc.add_EdgeServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    emulated = lm.profile.name if isinstance(lm, EmulatedLM) else None
    log_event(
        log, "edge_listening", address=address, node_id=node_id, model=lm.name, emulated=emulated
    )
    return EdgeNode(server, address, servicer, gate, health_servicer)


async def run_edge(config: EdgeNodeConfig, ready_file: Path | None = None) -> None:
    """Process entry: serve, probe the clouds, publish telemetry, register; stop on a signal."""
    from models.loader import load_lm
    from models.providers import set_providers

    set_providers(config.onnx_providers)
    lm, tok = load_lm(config.model)
    lm = emulate(lm, config.device)  # every call still runs; its wall time becomes the device's
    node = await start_edge(lm, tok, config)
    servicer = node.servicer
    stop_node = node.stop
    if config.api.port >= 0:  # an agent on the device talks to localhost
        api = ApiServer(EdgeBackend(node.address, lm.name), config.api, servicer.metrics)
        await api.start()

        async def stop_node() -> None:
            await api.stop()
            await node.stop()

    servicer.stats.calibrate(lm, tok)
    node.servicer.clouds.start_probing(config.probe_period_s)
    info = pb.NodeInfo(
        node_id=node.servicer.node_id,
        role=pb.ROLE_EDGE,
        address=node.address,
        models=[pb.ModelInfo(name=lm.name, vocab_size=lm.vocab_size)],
        device=config.device,
        max_sessions=config.edge.max_concurrent,
        tokenizer=fingerprint(tok),
    )
    stop_serving = stop_node

    async def stop_drained() -> None:  # deregistered by now: wait for the work in progress
        await node.drain(config.drain_s)
        await stop_serving()

    await run_node(
        info,
        "edge",
        config.coordinator,
        lambda: pb.NodeLoad(active_sessions=servicer.active),
        lambda: _with_emulation(servicer.stats.reading(servicer.active, servicer.clouds), lm),
        stop_drained,
        ready_file,
        node.begin_drain,
    )


def _with_emulation(reading: Reading, lm: CausalLM) -> Reading:
    """The telemetry sample with the emulated device's counters, when there is one."""
    extra = emulation_values(lm)
    return replace(reading, extra={**reading.extra, **extra}) if extra else reading
