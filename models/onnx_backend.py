"""ONNX Runtime backend of the model protocol: the edge drafter, fp32 or int8, without torch.

Exporting needs torch (it runs on a build machine or the cloud); serving needs only onnxruntime
and numpy, so torch is imported inside the export functions and nowhere else in this module.
The exported graph is ``TinyLM.forward`` itself, KV cache in and out, so a session here keeps
the same [layers, heads, positions, head_dim] cache as the torch backend and truncates the same
way: by moving its length.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from models.base import CacheSession, check_feed
from models.providers import CPU, choose, wanted

if TYPE_CHECKING:  # only for the annotation; importing it at run time would pull in torch
    from models.quantize import QuantScheme
    from models.transformer import TinyLM

# Same directory as models.torch_backend.CHECKPOINT_DIR, restated so loading needs no torch.
CHECKPOINT_DIR = Path(__file__).parent / "checkpoints"
INPUT_NAMES = ("input_ids", "position_ids", "past_keys", "past_values", "attention_mask")
OUTPUT_NAMES = ("logits", "present_keys", "present_values")


@dataclass(frozen=True)
class OnnxShape:
    """The model shape an ONNX session needs, read from the config.json beside the graph."""

    vocab_size: int  # number of token ids (width of the logits)
    n_layers: int  # transformer blocks (first axis of the cache)
    n_heads: int  # attention heads per block
    head_dim: int  # width of one head
    max_len: int  # longest sequence the position table covers

    @classmethod
    def load(cls, path: Path) -> OnnxShape:
        """Parse models.transformer.ModelConfig JSON without importing it (it imports torch)."""
        raw = json.loads(path.read_text())
        return cls(
            vocab_size=int(raw["vocab_size"]),
            n_layers=int(raw["n_layers"]),
            n_heads=int(raw["n_heads"]),
            head_dim=int(raw["d_model"]) // int(raw["n_heads"]),
            max_len=int(raw["max_len"]),
        )


def inference_session(path: Path, threads: int = 1) -> ort.InferenceSession:
    """A session over one graph, with ``threads`` intra-op threads, on the providers the node's
    config asks for (``models.providers``), the CPU last.

    One thread by default: an edge shares its cores with the agent loop and the network, and a
    cloud node with its other models.
    """
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = choose(ort.get_available_providers(), wanted())
    try:
        return ort.InferenceSession(str(path), opts, providers=providers)
    except Exception:  # a GPU provider that cannot start here: the CPU always can
        if providers == [CPU]:
            raise
        return ort.InferenceSession(str(path), opts, providers=[CPU])


def _causal_mask(past: int, new: int) -> np.ndarray:
    """[new, past + new] bool: every cached key, and new keys up to the token itself."""
    m = np.ones((new, past + new), dtype=bool)
    m[:, past:] = np.tri(new, dtype=bool)
    return m


class OnnxSession(CacheSession):
    """A preallocated numpy KV cache of one sequence; truncation only moves the length."""

    def __init__(self, lm: OnnxLM) -> None:
        c = lm.shape
        self.lm = lm
        self.keys = np.zeros((c.n_layers, c.n_heads, c.max_len, c.head_dim), dtype=np.float32)
        self.values = np.zeros_like(self.keys)
        self._length = 0


class OnnxLM:
    """An exported TinyLM served by ONNX Runtime through the model protocol."""

    def __init__(self, path: str | Path, name: str | None = None, threads: int = 1) -> None:
        path = Path(path)
        config = path.parent / "config.json"
        if not config.is_file():
            raise FileNotFoundError(f"no config.json beside {path}")
        self.path = path
        self.shape = OnnxShape.load(config)
        self.name = name or path.stem
        self.vocab_size = self.shape.vocab_size
        self.max_len = self.shape.max_len
        self.ort = inference_session(path, threads)

    def session(self) -> OnnxSession:
        """A fresh, empty session."""
        return OnnxSession(self)

    def _run(
        self, ids: np.ndarray, pos: np.ndarray, pk: np.ndarray, pv: np.ndarray, mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        feed = dict(zip(INPUT_NAMES, (ids, pos, pk, pv, mask), strict=True))
        logits, keys, values = self.ort.run(list(OUTPUT_NAMES), feed)
        return logits, keys, values

    def extend_batch(
        self, sessions: Sequence[OnnxSession], tokens: Sequence[Sequence[int]]
    ) -> list[np.ndarray]:
        """One graph run over every session; rows may have different cache and draft lengths."""
        if not sessions:
            return []
        check_feed(self, sessions, tokens)
        if len(sessions) == 1:
            return [self._extend_one(sessions[0], tokens[0])]
        return self._extend_many(sessions, tokens)

    def _extend_one(self, s: OnnxSession, tokens: Sequence[int]) -> np.ndarray:
        n, past = len(tokens), s.length
        ids = np.asarray([list(tokens)], dtype=np.int64)
        pos = np.arange(past, past + n, dtype=np.int64)[None]
        # A prefix slice of the preallocated cache is strided; ORT wants contiguous buffers.
        pk = np.ascontiguousarray(s.keys[:, None, :, :past])
        pv = np.ascontiguousarray(s.values[:, None, :, :past])
        logits, k, v = self._run(ids, pos, pk, pv, _causal_mask(past, n)[None])
        s.keys[:, :, past : past + n] = k[:, 0, :, past:]
        s.values[:, :, past : past + n] = v[:, 0, :, past:]
        s._length = past + n
        return logits[0].astype(np.float32, copy=False)

    def _extend_many(
        self, sessions: Sequence[OnnxSession], tokens: Sequence[Sequence[int]]
    ) -> list[np.ndarray]:
        # Right-pad both the caches (to the longest cache) and the new tokens (to the longest
        # draft); the mask hides padded keys, and padded queries' outputs are dropped.
        c, b = self.shape, len(sessions)
        lens = [s.length for s in sessions]
        ns = [len(t) for t in tokens]
        s_max, t_max = max(lens), max(ns)
        pk = np.zeros((c.n_layers, b, c.n_heads, s_max, c.head_dim), dtype=np.float32)
        pv = np.zeros_like(pk)
        ids = np.zeros((b, t_max), dtype=np.int64)
        pos = np.zeros((b, t_max), dtype=np.int64)
        mask = np.zeros((b, t_max, s_max + t_max), dtype=bool)
        tri = np.tri(t_max, dtype=bool)
        for i, (s, t) in enumerate(zip(sessions, tokens, strict=True)):
            pk[:, i, :, : s.length] = s.keys[:, :, : s.length]
            pv[:, i, :, : s.length] = s.values[:, :, : s.length]
            ids[i, : len(t)] = list(t)
            # Padded queries still need a valid position index into the embedding table.
            pos[i] = np.minimum(np.arange(s.length, s.length + t_max), c.max_len - 1)
            mask[i, :, : s.length] = True
            mask[i, :, s_max:] = tri
        logits, k, v = self._run(ids, pos, pk, pv, mask)
        out = []
        for i, s in enumerate(sessions):
            n, past = ns[i], lens[i]
            s.keys[:, :, past : past + n] = k[:, i, :, s_max : s_max + n]
            s.values[:, :, past : past + n] = v[:, i, :, s_max : s_max + n]
            s._length = past + n
            out.append(logits[i, :n].astype(np.float32, copy=False))
        return out


def int8_path(path: Path) -> Path:
    """Where the int8 twin of an fp32 graph goes: model.onnx -> model.int8.onnx."""
    return path.with_name(f"{path.stem}.int8.onnx")


def export_onnx(
    module: TinyLM, path: Path, int8: bool = True, scheme: QuantScheme | None = None
) -> Path:
    """Export ``module`` (with its KV cache) to ``path`` as fp32, plus config.json beside it.

    With ``int8``, also write the int8 graph to ``int8_path(path)`` by ``scheme`` (default
    ``models.quantize.DEFAULT``, which cannot saturate on any CPU) and return that path;
    otherwise return ``path``. The fp32 graph is checked against torch on a
    prefill from an empty cache (past length 0), the case a shape-specializing exporter breaks.
    """
    import torch  # export only: the edge that loads the result has no torch

    from models.transformer import causal_mask

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    cfg = module.cfg
    cfg.save(path.parent / "config.json")
    # Example sizes above 1 so the tracer cannot specialize batch, new or past to a constant.
    b, t, s = 2, 3, 4
    example = (
        torch.randint(0, cfg.vocab_size, (b, t)),
        torch.arange(s, s + t).expand(b, t).contiguous(),
        torch.randn(cfg.n_layers, b, cfg.n_heads, s, cfg.head_dim),
        torch.randn(cfg.n_layers, b, cfg.n_heads, s, cfg.head_dim),
        causal_mask(s, t).expand(b, t, s + t).contiguous(),
    )
    dim = torch.export.Dim
    batch, new, past, total = dim("batch"), dim("new"), dim("past"), dim("total")
    dynamic = {
        "input_ids": {0: batch, 1: new},
        "position_ids": {0: batch, 1: new},
        "past_keys": {1: batch, 3: past},
        "past_values": {1: batch, 3: past},
        "attention_mask": {0: batch, 1: new, 2: total},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter is chatty about axis renames
        torch.onnx.export(
            module,
            example,
            str(path),
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=dynamic,
            external_data=False,  # one self-contained file per model: easy to ship to a device
            dynamo=True,
            verbose=False,
        )
    _check_empty_past(module, path)
    if not int8:
        return path
    from models.quantize import DEFAULT, quantize

    scheme = scheme or DEFAULT
    feeds = calibration_feeds(OnnxShape.load(path.parent / "config.json")) if scheme.static else ()
    return quantize(path, int8_path(path), scheme, feeds)


def calibration_feeds(shape: OnnxShape, n: int = 64) -> list[dict[str, np.ndarray]]:
    """Prefill feeds of ``n`` training problems with their solutions, for static quantization."""
    from models import task

    tok = task.WordTokenizer()
    feeds = []
    for p in task.generate(n, task.TRAIN_SEED):
        ids = [tok.bos_id, *tok.encode(f"{p.question} {p.solution}"), tok.eos_id][: shape.max_len]
        t = len(ids)
        empty = np.zeros((shape.n_layers, 1, shape.n_heads, 0, shape.head_dim), np.float32)
        feeds.append(
            {
                "input_ids": np.asarray([ids], dtype=np.int64),
                "position_ids": np.arange(t, dtype=np.int64)[None],
                "past_keys": empty,
                "past_values": empty,
                "attention_mask": _causal_mask(0, t)[None],
            }
        )
    return feeds


def _check_empty_past(module: TinyLM, path: Path) -> None:
    """Raise RuntimeError unless the graph matches torch for a prefill from an empty cache."""
    import torch

    from models.transformer import causal_mask

    n = 3
    ids = torch.randint(0, module.cfg.vocab_size, (1, n))
    pos = torch.arange(n)[None]
    empty = module.empty_cache(1)
    with torch.no_grad():
        want = module(ids, pos, empty, empty, causal_mask(0, n))[0].numpy()
    lm = OnnxLM(path)
    got = lm._run(ids.numpy(), pos.numpy(), empty.numpy(), empty.numpy(), causal_mask(0, n).numpy())
    if not np.allclose(got[0], want, atol=1e-4):
        raise RuntimeError(f"exported {path} disagrees with torch for an empty past")


def model_dir(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.is_dir():
        return p
    bundled = CHECKPOINT_DIR / str(name_or_path)
    if bundled.is_dir():
        return bundled
    raise FileNotFoundError(f"no ONNX model named or at {name_or_path!r}")


def load_onnx(name_or_path: str | Path, int8: bool = True, threads: int = 1) -> OnnxLM:
    """A bundled name (``drafter``), a checkpoint directory, or a path to a .onnx file.

    For a name or directory, ``int8`` picks model.int8.onnx or model.onnx; a missing file is an
    error rather than a silent switch of precision, which would skew latency experiments.
    """
    p = Path(name_or_path)
    if p.suffix == ".onnx":
        if not p.is_file():
            raise FileNotFoundError(f"no ONNX file at {p}")
        return OnnxLM(p, name=p.stem, threads=threads)
    d = model_dir(name_or_path)
    f = d / ("model.int8.onnx" if int8 else "model.onnx")
    if not f.is_file():
        raise FileNotFoundError(
            f"{f} does not exist; create it with models.onnx_backend.export_checkpoint({str(d)!r})"
        )
    return OnnxLM(f, name=f"{d.name}-int8" if int8 else d.name, threads=threads)


def export_checkpoint(
    name_or_path: str | Path, int8: bool = True, scheme: QuantScheme | None = None
) -> Path:
    """Export a safetensors checkpoint beside itself as model.onnx (and model.int8.onnx)."""
    from models.torch_backend import load_module, resolve_checkpoint

    d = resolve_checkpoint(name_or_path)
    return export_onnx(load_module(d), d / "model.onnx", int8=int8, scheme=scheme)
