"""A cloud node whose target runs in vLLM: ``tandem serve cloud --engine vllm --model DIR``.

The node is the same gRPC servicer as ever (``cloud_node.service.CloudServicer``) over a
``VllmEngine``. vLLM starts its engine core and workers as processes of its own, so the entry
point must be import-safe (``tandem`` and ``python -m tandem`` are). Needs the environment made by
``scripts/setup-vllm``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloud_node.vllm_config import VllmSettings
from cloud_node.vllm_engine import ServedModel, VllmEngine
from models.fingerprint import fingerprint
from node_runtime.serving import log_event
from tandem_wire.v1 import tandem_pb2 as pb

if TYPE_CHECKING:
    from cloud_node.node import CloudConfig

log = logging.getLogger("tandem.cloud")
WARM_DRAFT = 4  # draft length of the requests that warm the engine up and seed the cost fit


def model_dir(spec: str) -> Path:
    """The Hugging Face directory of ``--model`` (``DIR`` or ``hf:DIR``), checked."""
    p = Path(spec.removeprefix("hf:"))
    if not (p / "config.json").is_file():
        raise SystemExit(
            f"--engine vllm needs --model DIR, a Hugging Face directory with config.json; got "
            f"{spec!r} (docs/vllm.md converts the SmolLM2 GGUF into one)"
        )
    return p


async def build_engine(
    directory: Path, config: CloudConfig, settings: VllmSettings
) -> tuple[VllmEngine, Any]:
    """Start vLLM's async engine over ``directory``; the engine and the model's tokenizer."""
    try:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM
    except ImportError as exc:
        raise SystemExit(
            f"--engine vllm: vLLM is not importable here ({exc}); run scripts/setup-vllm and "
            "start the node with .venv-vllm/bin/tandem"
        ) from None
    from models.hf_backend import HFTokenizer

    if settings.ray_address:
        os.environ["RAY_ADDRESS"] = settings.ray_address  # vLLM's Ray executor joins it
    llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**settings.engine_args(str(directory))))
    tok = HFTokenizer(llm.get_tokenizer())  # the checkpoint's, as vLLM loaded it
    hf = json.loads((directory / "config.json").read_text())
    vocab = int(hf.get("vocab_size") or tok.vocab_size)
    model = ServedModel(directory.name, vocab, settings.max_model_len)
    engine = VllmEngine(llm, model, config.engine, settings)
    await warm_up(engine, tok.bos_id)
    return engine, tok


async def warm_up(engine: VllmEngine, token: int) -> None:
    """Run each kind of request once (vLLM compiles some kernels on first use), then time a few
    verify-sized and generation requests so the cost figures start from measurements."""
    prompt = [token] * 8
    drafts = [token] * WARM_DRAFT
    for _ in range(2):  # the first pass pays the one-time costs, the second is timed
        t0 = time.perf_counter()
        await engine.request(
            prompt + drafts,
            max_tokens=1,
            prompt_logprobs=1,
            temperature=0.0,
            skip_reading_prefix_cache=True,
        )
        ms = (time.perf_counter() - t0) * 1e3
        await engine.request(
            prompt, max_tokens=1, temperature=0.7, top_p=0.9, seed=0, logprob_token_ids=[token]
        )
        await engine.request(prompt, max_tokens=1, temperature=0.7, seed=0, n=2, logprobs=0)
        t0 = time.perf_counter()
        await engine.request(prompt, max_tokens=8, temperature=0.0, ignore_eos=True)
        gen_ms = (time.perf_counter() - t0) * 1e3
    engine.costs.observe_verify(WARM_DRAFT + 1, ms)
    engine.costs.observe_generate(8, gen_ms)
    engine.counters.requests = 0


async def serve_metrics(engine: VllmEngine, config: CloudConfig, node_id: str) -> Any:
    """Prometheus /metrics (``--metrics-port``): every value of the engine's Metrics RPC as
    ``tandem_cloud_engine{name=...}``, read at scrape time; None without a port."""
    if config.metrics_port < 0:
        return None
    from cloud_node.node import start_metrics
    from node_runtime.metrics import NodeMetrics

    metrics = NodeMetrics("cloud", node_id)
    metrics.watch(
        "tandem_cloud_engine",
        "The cloud engine's Metrics RPC values (vLLM engine), by name",
        lambda: {(k,): float(v) for k, v in engine.metrics().items()},
        labels=("name",),
    )
    return await start_metrics(metrics, config)


async def run_vllm_cloud(config: CloudConfig, ready_file: Path | None = None) -> None:
    """Process entry of ``--engine vllm``: start vLLM, serve, publish telemetry, register; on
    SIGTERM/SIGINT drain like the torch node (NOT_SERVING, then wait for calls in progress)."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from cloud_node.node import CloudNode, LoadProbe, serve_until_stopped
    from cloud_node.service import CloudServicer
    from node_runtime.serving import DrainGate, aio_server, bind
    from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

    directory = model_dir(config.model)
    engine, tok = await build_engine(directory, config, config.vllm)
    engine.start()
    gate = DrainGate()
    server = aio_server(gate=gate)
    address = bind(server, config.host, config.port)
    node_id = config.node_id or f"cloud-{address}"
    servicer = CloudServicer(engine, node_id, tok.eos_id, None, tok)
    pb_grpc.add_CloudServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    log_event(
        log,
        "cloud_listening",
        address=address,
        node_id=node_id,
        model=directory.name,
        engine="vllm",
    )
    model = pb.ModelInfo(
        name=directory.name,
        vocab_size=engine.lm.vocab_size,
        backend=config.vllm.capabilities(),
    )
    info = pb.NodeInfo(
        node_id=node_id,
        role=pb.ROLE_CLOUD,
        address=address,
        models=[model],
        device=config.device,
        max_sessions=config.engine.max_sessions,
        tokenizer=fingerprint(tok),
    )
    # the node's own lifecycle and load figures, duck-typed over the vLLM engine
    node = CloudNode(server, address, engine, servicer, gate, health_servicer)  # type: ignore[arg-type]
    probe = LoadProbe(engine)  # type: ignore[arg-type]
    http = await serve_metrics(engine, config, node_id)
    await serve_until_stopped(node, probe, info, config, ready_file, http)
