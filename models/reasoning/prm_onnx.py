"""The PRM on ONNX Runtime, and the PRM's input layout (shared with the torch model).

A scoring call in step speculation is one short sequence; at that size the torch PRM spends most
of its time in per-operator overhead, which ONNX Runtime does not have (``tandem bench reason``
times both: ``step_costs.prm_onnx_ms`` and ``prm_torch_ms``). ``tandem export-onnx prm`` writes
the graph (``models.reasoning.prm.export_prm_onnx``); scoring with it needs numpy and
onnxruntime only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from models import task
from models.onnx_backend import inference_session, model_dir

ONNX_FILE = "model.onnx"  # the fp32 graph, beside config.json and model.safetensors
DELIMITER_ID = task.WordTokenizer().encode(task.STEP_DELIMITER)[0]  # where each step is read


def encode(
    tok: task.WordTokenizer, question: str, steps: Sequence[str]
) -> tuple[list[int], list[int]]:
    """Token ids in the PRM layout and the delimiter position that scores each step.

    A step with words outside the task's vocabulary ends the row there: it and the steps after
    it get no position, so they score as wrong (as does every step of such a question) instead
    of failing a scoring pass that other callers' rows share.
    """
    try:
        ids, where = [tok.bos_id, *tok.encode(question)], []
    except ValueError:
        return [tok.bos_id], []
    for step in steps:
        try:
            words = tok.encode(step)
        except ValueError:
            break
        ids.extend(words)
        ids.append(DELIMITER_ID)
        where.append(len(ids) - 1)
    return ids, where


def pad_rows(
    tok: task.WordTokenizer, rows: Sequence[tuple[str, Sequence[str]]], max_len: int
) -> tuple[np.ndarray, list[list[int]]]:
    """Right-padded ids [B, T] (int64) and each row's scoring positions.

    Rows are cut at ``max_len``; steps whose delimiter falls past it get no position (no
    solution of the task is that long, so they score as wrong).
    """
    encoded = [encode(tok, q, s) for q, s in rows]
    longest = min(max_len, max((len(ids) for ids, _ in encoded), default=1))
    ids = np.full((len(rows), longest), tok.pad_id, dtype=np.int64)
    for i, (r, _) in enumerate(encoded):
        r = r[:max_len]
        ids[i, : len(r)] = r
    return ids, [[w for w in where if w < max_len] for _, where in encoded]


def gather_probs(
    probs: np.ndarray, where: Sequence[Sequence[int]], rows: Sequence[tuple[str, Sequence[str]]]
) -> list[list[float]]:
    """Each row's per-step probabilities from [B, T] per-position ones; 0.0 for unscored steps."""
    out = []
    for i, (w, (_, steps)) in enumerate(zip(where, rows, strict=True)):
        out.append([float(x) for x in probs[i, list(w)]] + [0.0] * (len(steps) - len(w)))
    return out


class OnnxPRM:
    """An exported PRM: P(step is right) for every step of every row, torch-free."""

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        path = Path(path)
        config = path.parent / "config.json"
        if not path.is_file() or not config.is_file():
            raise FileNotFoundError(
                f"no PRM graph at {path} (with config.json beside it); "
                "write it with `tandem export-onnx prm`"
            )
        self.path = path
        self.max_len = int(json.loads(config.read_text())["max_len"])
        self.tok = task.WordTokenizer()
        self.ort = inference_session(path, threads)

    @classmethod
    def load(cls, name_or_path: str | Path = "prm", threads: int = 1) -> OnnxPRM:
        """The bundled PRM (``prm``), a checkpoint directory, or a path to its .onnx file."""
        p = Path(name_or_path)
        return cls(p if p.suffix == ".onnx" else model_dir(name_or_path) / ONNX_FILE, threads)

    def step_probs(
        self, rows: Sequence[tuple[str, Sequence[str]]], chunk: int = 256
    ) -> list[list[float]]:
        """P(correct) of every step of every row; one run of the graph per ``chunk`` rows."""
        out: list[list[float]] = []
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            ids, where = pad_rows(self.tok, part, self.max_len)
            logits = self.ort.run(None, {"input_ids": ids})[0]
            out += gather_probs(1.0 / (1.0 + np.exp(-logits)), where, part)
        return out
