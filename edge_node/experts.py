"""The edge side of MoE offloading: the tiers an expert can come from, and the runner.

Tiers, fastest first:

1. resident: experts held in memory under a byte budget (``models.moe.cache``);
2. local disk: the checkpoint's per-expert tensors, memory-mapped (``models.moe.store``);
3. cloud expert store: a cloud node streams an expert's weights in <= 1 MiB chunks;
4. remote compute: the cloud runs the expert on the rows the edge sends.

The cost model (``models.moe.costs``) picks per miss between fetching weights, remote compute
and waiting for an in-flight prefetch; background threads prefetch the experts the cross-layer
predictor names, overlapping compute. Importing this module needs no torch; running the bundled
MoE does (it is a torch model), so the runner imports it when built.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np

from models.moe.layouts import ExpertKey
from models.moe.quant import dequantize_rows
from models.moe.store import ExpertTensors
from node_runtime.serving import sync_channel
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from models.moe.offload import OffloadConfig, OffloadExecutor

FETCH_DEADLINE_S = 60.0  # one expert's stream (a real expert over a slow link takes seconds)
COMPUTE_DEADLINE_S = 30.0


class Tier(str, enum.Enum):
    """Where an expert's weights or output came from."""

    RESIDENT = "resident"
    DISK = "disk"
    CLOUD = "cloud"
    REMOTE = "remote"


@dataclass
class WireCounters:
    """Bytes and calls over the link to the expert server (payload, both ways)."""

    fetches: int = 0
    fetched_bytes: int = 0
    computes: int = 0
    compute_bytes: int = 0


class CloudExperts:
    """A cloud node's expert server, as an ``ExpertStore`` (fetch) and ``RemoteExperts``."""

    def __init__(
        self, address: str, int8: bool = False, channel: grpc.Channel | None = None
    ) -> None:
        self.channel = channel or sync_channel(address)
        self.stub = pb_grpc.ExpertsStub(self.channel)
        self.int8 = int8  # lossy: dequantized int8 weights
        self.manifest = self.stub.Manifest(pb.ExpertManifestRequest(), timeout=COMPUTE_DEADLINE_S)
        self.counters = WireCounters()
        self._lock = threading.Lock()
        m = self.manifest
        if not m.n_layers or not m.expert_bytes:
            raise ValueError(f"expert server at {address} serves no experts")
        self._wire_bytes = m.expert_bytes if not int8 else self._int8_bytes(m)

    @staticmethod
    def _int8_bytes(m: pb.ExpertManifest) -> int:
        params = m.expert_bytes // 4  # the bundled and test checkpoints store fp32
        return params + 4 * (2 * (params // (3 * m.d_model)) + m.d_model)  # + per-row scales

    def close(self) -> None:
        self.channel.close()

    def expert_bytes(self, key: ExpertKey) -> int:
        return int(self._wire_bytes)

    def fetch(self, key: ExpertKey) -> ExpertTensors:
        req = pb.FetchExpertRequest(
            id=pb.ExpertId(layer=key.layer, expert=key.expert), int8=self.int8
        )
        bufs: dict[str, bytearray] = {}
        meta: dict[str, tuple[str, tuple[int, ...]]] = {}
        for chunk in self.stub.FetchExpert(req, timeout=FETCH_DEADLINE_S):
            buf = bufs.setdefault(chunk.part, bytearray())
            if chunk.offset != len(buf):
                raise ValueError(
                    f"expert {key}: chunk of {chunk.part} at {chunk.offset}, expected {len(buf)}"
                )
            buf += chunk.data
            meta[chunk.part] = (chunk.dtype, tuple(chunk.shape))
        arrays = {
            p: np.frombuffer(bytes(b), meta[p][0]).reshape(meta[p][1]) for p, b in bufs.items()
        }
        with self._lock:
            self.counters.fetches += 1
            self.counters.fetched_bytes += sum(len(b) for b in bufs.values())
        if self.int8:
            parts = [
                dequantize_rows(arrays[p], arrays[f"{p}_scale"]) for p in ("gate", "up", "down")
            ]
            return ExpertTensors(*parts)
        return ExpertTensors(arrays["gate"], arrays["up"], arrays["down"])

    def compute(self, layer: int, rows: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
        msgs = [
            pb.ExpertRowsMsg(
                expert=e, rows=len(x), data=np.ascontiguousarray(x, np.float32).tobytes()
            )
            for e, x in rows.items()
        ]
        reply = self.stub.ComputeExperts(
            pb.ComputeExpertsRequest(layer=layer, inputs=msgs), timeout=COMPUTE_DEADLINE_S
        )
        d = self.manifest.d_model
        out = {
            m.expert: np.frombuffer(m.data, np.float32).reshape(m.rows, d).copy()
            for m in reply.outputs
        }
        with self._lock:
            self.counters.computes += 1
            self.counters.compute_bytes += sum(len(m.data) for m in msgs) + sum(
                len(m.data) for m in reply.outputs
            )
        return out


@dataclass
class EdgeMoE:
    """A MoE served on the edge: a model-protocol LM whose experts run through an executor."""

    lm: Any  # models.torch_backend.TorchLM over the MoE module
    executor: OffloadExecutor
    cloud: CloudExperts | None

    def close(self) -> None:
        self.executor.close()
        if self.cloud is not None:
            self.cloud.close()

    def tiers(self) -> dict[str, object]:
        """Requests and bytes per tier (what the edge reports)."""
        st = self.executor.stats
        store = self.executor.store
        d: dict[str, object] = {
            Tier.RESIDENT.value: {"hits": st.hits, "bytes": self.executor.cache.used_bytes},
        }
        if self.cloud is not None:
            c = self.cloud.counters
            d[Tier.CLOUD.value] = {"fetches": c.fetches, "bytes": c.fetched_bytes}
            d[Tier.REMOTE.value] = {"calls": c.computes, "bytes": c.compute_bytes}
        else:
            d[Tier.DISK.value] = {
                "reads": getattr(store, "reads", 0),
                "bytes": getattr(store, "bytes_read", 0),
            }
        return d


def build_edge_moe(
    checkpoint: str | Path,
    config: OffloadConfig,
    cloud: str = "",
    int8: bool = False,
    predict: bool = True,
) -> EdgeMoE:
    """The bundled-layout MoE ``checkpoint`` (dense part local) with its experts offloaded:
    from the cloud expert server at ``cloud`` (which also computes remotely), else from the
    local disk by memory map."""
    from models.moe.offload import OffloadExecutor
    from models.moe.runner import dense_only, predictor_of
    from models.moe.store import DiskStore
    from models.torch_backend import TorchLM

    module, directory = dense_only(checkpoint)
    remote = CloudExperts(cloud, int8=int8) if cloud else None
    store = remote if remote is not None else DiskStore(directory)
    c = module.cfg
    executor = OffloadExecutor(
        config, store, c.n_layers, c.d_model, remote, predictor_of(module) if predict else None
    )
    module.executor = executor
    return EdgeMoE(TorchLM(module, name=Path(str(checkpoint)).name), executor, remote)
