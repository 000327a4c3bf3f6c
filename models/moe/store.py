"""Expert weights on local disk, memory-mapped, read one expert at a time (torch-free).

A safetensors file is an 8-byte header length, a JSON header of ``name: {dtype, shape,
data_offsets}``, then the raw data; each tensor is mapped with ``numpy.memmap``, so reading one
expert touches that expert's pages only. Sharded checkpoints (``model.safetensors.index.json``)
are followed.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from models.moe.layouts import PARTS, ExpertKey, Layout, detect_layout, expert_tensor

_DTYPES = {"F32": np.float32, "F16": np.float16, "I8": np.int8, "BF16": np.uint16}
_MAX_HEADER = 100 * 1024 * 1024  # a header past this is a corrupt file, not a checkpoint


@dataclass(frozen=True)
class ExpertTensors:
    """The three weights of one SwiGLU expert, [I, D] gate and up, [D, I] down."""

    gate: np.ndarray
    up: np.ndarray
    down: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.gate.nbytes + self.up.nbytes + self.down.nbytes)

    def part(self, name: str) -> np.ndarray:
        """One weight by canonical name (gate, up, down)."""
        if name not in PARTS:
            raise ValueError(f"part: {name!r} is not one of {PARTS}")
        return getattr(self, name)

    def loaded(self) -> ExpertTensors:
        """An in-memory copy (memory-mapped arrays read into RAM)."""
        return ExpertTensors(*(np.array(self.part(p), copy=True) for p in PARTS))


class ExpertStore(Protocol):
    """Where the weights of experts come from: local disk, or a cloud node's expert server."""

    def fetch(self, key: ExpertKey) -> ExpertTensors:
        """The weights of one expert."""
        ...

    def expert_bytes(self, key: ExpertKey) -> int:
        """How many bytes fetching ``key`` moves."""
        ...


def bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    """bfloat16 bits (as uint16) to float32, exactly."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


class SafetensorsFile:
    """One memory-mapped safetensors file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > _MAX_HEADER:
                raise ValueError(f"{path}: header of {n} bytes is not a safetensors header")
            header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        self.header: dict[str, dict] = header
        self.data_start = 8 + n

    def keys(self) -> list[str]:
        return list(self.header)

    def nbytes(self, name: str) -> int:
        begin, end = self.header[name]["data_offsets"]
        return int(end - begin)

    def tensor(self, name: str) -> np.ndarray:
        """A read-only memory map of tensor ``name`` (bf16 is widened to float32)."""
        info = self.header.get(name)
        if info is None:
            raise KeyError(f"{self.path.name} holds no tensor {name!r}")
        if info["dtype"] not in _DTYPES:
            raise ValueError(f"{name}: dtype {info['dtype']} is not served")
        begin, end = info["data_offsets"]
        dtype, shape = np.dtype(_DTYPES[info["dtype"]]), tuple(info["shape"])
        if end == begin:
            return np.zeros(shape, dtype)
        arr = np.memmap(self.path, dtype, "r", self.data_start + begin, shape)
        return bf16_to_f32(arr) if info["dtype"] == "BF16" else arr


class Checkpoint:
    """Every tensor of a (possibly sharded) safetensors checkpoint directory, by key."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        index = directory / "model.safetensors.index.json"
        if index.is_file():
            weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
            files = {f: SafetensorsFile(directory / f) for f in set(weight_map.values())}
            self._where = {k: files[f] for k, f in weight_map.items()}
        else:
            single = SafetensorsFile(directory / "model.safetensors")
            self._where = dict.fromkeys(single.keys(), single)

    def keys(self) -> list[str]:
        return list(self._where)

    def tensor(self, name: str) -> np.ndarray:
        if name not in self._where:
            raise KeyError(f"{self.directory} holds no tensor {name!r}")
        return self._where[name].tensor(name)

    def nbytes(self, name: str) -> int:
        return self._where[name].nbytes(name)


class DiskStore:
    """Experts read from a local checkpoint by memory map: the edge's local-disk tier."""

    def __init__(self, directory: Path, layout: Layout | None = None) -> None:
        self.directory = directory
        self.layout = layout or detect_layout(directory)
        self.checkpoint = Checkpoint(directory)
        self.reads = 0  # experts read
        self.bytes_read = 0  # bytes of those experts

    def fetch(self, key: ExpertKey) -> ExpertTensors:
        names = [expert_tensor(self.layout, key, p) for p in PARTS]
        out = ExpertTensors(*(self.checkpoint.tensor(n) for n in names))
        self.reads += 1
        self.bytes_read += out.nbytes
        return out

    def expert_bytes(self, key: ExpertKey) -> int:
        return sum(self.checkpoint.nbytes(expert_tensor(self.layout, key, p)) for p in PARTS)

    def experts(self) -> list[ExpertKey]:
        """Every expert the checkpoint holds, in (layer, expert) order."""
        found = set()
        for name in self.checkpoint.keys():
            parts = name.split(".")
            if ".experts." in name and parts[1] == "layers":
                found.add(ExpertKey(int(parts[2]), int(parts[parts.index("experts") + 1])))
        return sorted(found)
