"""The drafter on its three backends: torch fp32, ONNX Runtime fp32 and ONNX Runtime int8.

Splits the int8 claim in two: what ONNX Runtime gains over torch at the same precision, and what
int8 gains over ONNX Runtime fp32. Timed one token a call (as drafting runs), the backends
interleaved over the repeats.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from tqdm import tqdm

from models import task
from models.base import CausalLM
from models.generate import generate
from models.loader import load_lm
from models.onnx_backend import model_dir
from models.sampling import SamplingParams
from tandem.repeats import MIN_REPEATS, interleaved

TokenPath = tuple[list[int], list[int]]  # a prompt and torch's greedy continuation of it


def timed_decode(lm: CausalLM, paths: Sequence[TokenPath]) -> Callable[[], float]:
    """A run that feeds each path's tokens one call at a time; returns the median ms a call."""

    def run() -> float:
        times = []
        for prompt, ref in paths:
            s = lm.session()
            s.extend(prompt)
            for t in ref:
                t0 = time.perf_counter()
                s.extend([t])
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)

    return run


def agreement(a: CausalLM, b: CausalLM, paths: Sequence[TokenPath]) -> float:
    """Share of positions where a's and b's argmax agree, teacher-forced along the paths (what
    greedy speculation between them would accept)."""
    same = total = 0
    for prompt, ref in paths:
        seq = [*prompt, *ref][:-1]
        x = a.session().extend(seq)[len(prompt) - 1 :].argmax(-1)
        y = b.session().extend(seq)[len(prompt) - 1 :].argmax(-1)
        same, total = same + int((x == y).sum()), total + len(x)
    return same / total


def drafter_backends(
    prompts: Sequence[list[int]], repeats: int = MIN_REPEATS, name: str = "drafter"
) -> dict[str, Any]:
    """ms per incremental token of checkpoint ``name`` on torch fp32, ONNX Runtime fp32
    (model.onnx) and ONNX Runtime int8 (model.int8.onnx), the backends interleaved over the
    repeats; and greedy agreement between them along torch's greedy paths."""
    torch_fp32, _ = load_lm(f"torch:{name}")
    ort_fp32, _ = load_lm(f"onnx:{model_dir(name) / 'model.onnx'}")
    ort_int8, _ = load_lm(f"onnx:{model_dir(name) / 'model.int8.onnx'}")
    eos = task.WordTokenizer().eos_id
    paths = [(p, generate(torch_fp32, p, SamplingParams(0.0), 40, eos)) for p in prompts]
    lms = {"torch_fp32": torch_fp32, "onnx_fp32": ort_fp32, "onnx_int8": ort_int8}
    configs = {name: timed_decode(lm, paths) for name, lm in lms.items()}
    bar = tqdm(total=len(configs) * repeats, desc="drafter backends", leave=False)
    ms = interleaved(configs, repeats, lambda name, rep: bar.update(1))
    bar.close()
    return {
        "ms": ms,
        "onnx_fp32_agreement": agreement(ort_fp32, torch_fp32, paths),
        "onnx_int8_agreement": agreement(ort_int8, torch_fp32, paths),
        "int8_vs_fp32_agreement": agreement(ort_int8, ort_fp32, paths),
    }
