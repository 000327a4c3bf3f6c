"""The cloud as expert store and expert server for edges running a MoE with offloaded experts.

Two services over one checkpoint: ``FetchExpert`` streams one expert's weights in chunks of at
most 1 MiB (fp32 as stored, or int8 with per-row scales, lossy), and ``ComputeExperts`` runs
experts on rows an edge sends and returns their outputs, with the same expert function and
weights the edge would use, so remote compute is as lossless as local compute. The servicer only
converts; :class:`ExpertBank` holds the weights and computes.

Run one on its own: ``python -m cloud_node.experts --checkpoint moe-target --ready-file F``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import grpc
import numpy as np

from cloud_node.errors import RequestError
from models.moe.layouts import ExpertKey, Layout
from models.moe.quant import quantize_rows
from models.moe.store import DiskStore, ExpertTensors
from node_runtime.serving import aio_server, bind, log_event, setup_logging, write_ready
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

log = logging.getLogger("tandem.cloud.experts")

MAX_CHUNK_BYTES = 1024 * 1024  # the cap on one streamed chunk
MAX_ROWS = 2048  # rows per ComputeExperts call (bounded by the 4 MiB message cap at d 128)
_CODES = {
    "invalid": grpc.StatusCode.INVALID_ARGUMENT,
    "exhausted": grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def resolve_moe_dir(name_or_path: str | Path) -> Path:
    """A bundled MoE checkpoint name or a directory (torch-free)."""
    p = Path(name_or_path)
    if p.is_dir():
        return p
    bundled = Path(__file__).resolve().parents[1] / "models" / "checkpoints" / str(name_or_path)
    if bundled.is_dir():
        return bundled
    raise FileNotFoundError(f"no MoE checkpoint named or at {name_or_path!r}")


class ExpertBank:
    """Every expert of a checkpoint, read by memory map, with torch weights for compute."""

    def __init__(
        self, directory: Path, threads: int = 1, max_chunk_bytes: int = MAX_CHUNK_BYTES
    ) -> None:
        if not 0 < max_chunk_bytes <= MAX_CHUNK_BYTES:
            raise ValueError(f"max_chunk_bytes: {max_chunk_bytes} outside (0, {MAX_CHUNK_BYTES}]")
        self.directory = directory
        self.store = DiskStore(directory)
        keys = self.store.experts()
        if not keys:
            raise ValueError(f"{directory} holds no per-expert tensors")
        self.n_layers = max(k.layer for k in keys) + 1
        self.n_experts = max(k.expert for k in keys) + 1
        first = self.store.fetch(keys[0])
        self.d_model = int(first.gate.shape[1])
        self.expert_bytes = first.nbytes
        self.max_chunk_bytes = max_chunk_bytes
        self._weights: dict[ExpertKey, object] = {}
        self._lock = threading.Lock()
        self.threads = threads  # torch intra-op threads of remote compute
        self.fetches = 0  # experts streamed
        self.computed_rows = 0  # rows computed for edges

    @property
    def layout(self) -> Layout:
        return self.store.layout

    def check(self, layer: int, expert: int) -> ExpertKey:
        """The key, or an ``invalid`` RequestError naming the field out of range."""
        if not 0 <= layer < self.n_layers:
            raise RequestError("invalid", f"layer: {layer} outside [0, {self.n_layers})")
        if not 0 <= expert < self.n_experts:
            raise RequestError("invalid", f"expert: {expert} outside [0, {self.n_experts})")
        return ExpertKey(layer, expert)

    def parts(self, key: ExpertKey, int8: bool) -> list[tuple[str, np.ndarray]]:
        """The arrays to stream for one expert: fp32 parts, or int8 parts and their scales."""
        t: ExpertTensors = self.store.fetch(key)
        self.fetches += 1
        if not int8:
            return [(p, np.ascontiguousarray(t.part(p))) for p in ("gate", "up", "down")]
        out = []
        for p in ("gate", "up", "down"):
            q, scale = quantize_rows(t.part(p))
            out += [(p, q), (f"{p}_scale", scale)]
        return out

    def compute(self, layer: int, rows: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
        """Each expert's output rows for its input rows (torch, the edge's expert function)."""
        import torch

        from models.moe.offload import to_weights
        from models.moe.routing import expert_mlp

        # OpenMP's thread count is per OS thread, and a matmul over several rows splits its work
        # by it: the worker thread gets the node's count, so its floats are the edge's floats
        # when both run one build with one count (the lossless condition for remote compute)
        torch.set_num_threads(self.threads)
        out = {}
        with torch.inference_mode():
            for e, x in rows.items():
                key = self.check(layer, e)
                with self._lock:
                    w = self._weights.get(key)
                    if w is None:
                        w = self._weights[key] = to_weights(self.store.fetch(key))
                # a copy into torch's allocator: its alignment, not the wire buffer's, picks
                # the matmul kernel, and the edge computes on torch-allocated rows
                out[e] = expert_mlp(torch.tensor(x), *w).numpy()  # type: ignore[misc]
                self.computed_rows += len(x)
        return out


class ExpertsServicer(pb_grpc.ExpertsServicer):
    """Converts wire messages and calls the bank."""

    def __init__(self, bank: ExpertBank, name: str) -> None:
        self.bank, self.name = bank, name

    async def Manifest(
        self, request: pb.ExpertManifestRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExpertManifest:
        b = self.bank
        return pb.ExpertManifest(
            model=self.name,
            layout=b.layout.value,
            n_layers=b.n_layers,
            n_experts=b.n_experts,
            d_model=b.d_model,
            expert_bytes=b.expert_bytes,
            max_chunk_bytes=b.max_chunk_bytes,
            max_rows=MAX_ROWS,
        )

    async def FetchExpert(
        self, request: pb.FetchExpertRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ExpertChunk]:
        try:
            key = self.bank.check(request.id.layer, request.id.expert)
        except RequestError as exc:
            await context.abort(_CODES[exc.kind], str(exc))
            return
        parts = await asyncio.to_thread(self.bank.parts, key, request.int8)
        step = self.bank.max_chunk_bytes
        for name, arr in parts:
            raw = arr.tobytes()
            for off in range(0, max(len(raw), 1), step):
                yield pb.ExpertChunk(
                    part=name,
                    dtype=str(arr.dtype),
                    shape=list(arr.shape),
                    offset=off,
                    total_bytes=len(raw),
                    data=raw[off : off + step],
                )

    async def ComputeExperts(
        self, request: pb.ComputeExpertsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ComputeExpertsReply:
        try:
            rows = self._rows(request)
        except RequestError as exc:
            await context.abort(_CODES[exc.kind], str(exc))
            raise AssertionError("abort returned") from None
        start = time.perf_counter()
        out = await asyncio.to_thread(self.bank.compute, request.layer, rows)
        ms = (time.perf_counter() - start) * 1e3
        msgs = [pb.ExpertRowsMsg(expert=e, rows=len(y), data=y.tobytes()) for e, y in out.items()]
        return pb.ComputeExpertsReply(outputs=msgs, compute_ms=ms)

    def _rows(self, request: pb.ComputeExpertsRequest) -> dict[int, np.ndarray]:
        d, rows, total = self.bank.d_model, {}, 0
        for m in request.inputs:
            self.bank.check(request.layer, m.expert)
            if m.expert in rows:
                raise RequestError("invalid", f"inputs: expert {m.expert} appears twice")
            if m.rows < 1 or len(m.data) != m.rows * d * 4:
                raise RequestError(
                    "invalid",
                    f"inputs: expert {m.expert} sends {len(m.data)} bytes for "
                    f"{m.rows} float32 rows of {d}",
                )
            total += m.rows
            if total > MAX_ROWS:
                raise RequestError("exhausted", f"inputs: more than {MAX_ROWS} rows in one call")
            rows[m.expert] = np.frombuffer(m.data, np.float32).reshape(m.rows, d)
        return rows


def add_experts(server: grpc.aio.Server, checkpoint: str | Path) -> ExpertBank:
    """Serve the experts of ``checkpoint`` on ``server`` (before it starts)."""
    directory = resolve_moe_dir(checkpoint)
    bank = ExpertBank(directory)
    pb_grpc.add_ExpertsServicer_to_server(ExpertsServicer(bank, directory.name), server)
    return bank


async def serve_experts(
    checkpoint: str | Path, host: str = "127.0.0.1", port: int = 0
) -> tuple[grpc.aio.Server, str, ExpertBank]:
    """A started expert server on the running loop: (server, address, bank)."""
    server = aio_server()
    bank = add_experts(server, checkpoint)
    address = bind(server, host, port)
    await server.start()
    log_event(log, "experts_listening", address=address, layers=bank.n_layers)
    return server, address, bank


async def _main(args: argparse.Namespace) -> None:
    server, address, _ = await serve_experts(args.checkpoint, args.host, args.port)
    if args.ready_file:
        write_ready(Path(args.ready_file), address)
    await server.wait_for_termination()


def main(argv: list[str] | None = None) -> None:
    """Process entry: serve one checkpoint's experts until killed."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", default="moe-target")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--ready-file", default="")
    p.add_argument("--threads", type=int, default=1, help="torch threads for remote compute")
    args = p.parse_args(argv)
    setup_logging("warning")
    import torch

    torch.set_num_threads(args.threads)
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
