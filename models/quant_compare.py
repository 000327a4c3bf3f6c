"""Compare the int8 schemes of ``models.quantize`` on a trained checkpoint; prints one table.

    python -m models.quant_compare [--checkpoint drafter] [--problems 500]

For each scheme, on held-out problems of the bundled task:
- ``agree``: share of positions where the int8 graph's argmax equals torch's, teacher-forced along
  torch's greedy solutions (what greedy speculation accepts);
- ``same``: share of problems whose greedy solution is identical to torch's;
- ``accuracy``: final-answer accuracy of the int8 graph's greedy solutions;
- ``agree avx2``: ``agree`` with the arithmetic of an x86 CPU without VNNI, emulated in numpy
  (``models.quantize.avx2_evaluator``; dynamic schemes only);
- ``worst pair``: the largest u8 x s8 pair sum the weights allow; above 32767 AVX2 saturates.
Needs torch (for the reference) and onnxruntime.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from models import task
from models.base import CausalLM
from models.generate import generate
from models.onnx_backend import OnnxLM, calibration_feeds, export_onnx
from models.quantize import (
    INT16_MAX,
    SCHEMES,
    QuantScheme,
    emulated_lm,
    int8_matmul_weights,
    worst_pair_sum,
)
from models.quantize import quantize as quantize_graph
from models.sampling import SamplingParams


def greedy_paths(lm: CausalLM, problems: Sequence[task.Problem]) -> list[tuple[list[int], int]]:
    """(prompt + greedy solution, prompt length) of each problem, decoded by ``lm``."""
    tok = task.WordTokenizer()
    out = []
    for p in problems:
        prompt = [tok.bos_id, *tok.encode(p.question)]
        out.append((prompt + generate(lm, prompt, SamplingParams(), 40, tok.eos_id), len(prompt)))
    return out


def accuracy(paths: Sequence[tuple[list[int], int]], problems: Sequence[task.Problem]) -> float:
    """Final-answer accuracy of decoded paths."""
    tok = task.WordTokenizer()
    ok = [
        task.is_correct(p, tok.decode(seq[n:])) for (seq, n), p in zip(paths, problems, strict=True)
    ]
    return float(np.mean(ok))


def agreement(lm: CausalLM, paths: Sequence[tuple[list[int], int]]) -> float:
    """Share of solution positions where ``lm``'s argmax equals the path's next token."""
    agree = total = 0
    for seq, n in paths:
        pred = lm.session().extend(seq[:-1]).argmax(-1)[n - 1 :]
        agree += int((pred == np.asarray(seq[n:])).sum())
        total += len(seq) - n
    return agree / total


def measure(
    scheme: QuantScheme,
    fp32: Path,
    problems: Sequence[task.Problem],
    ref: list[tuple[list[int], int]],
    avx2_problems: int,
) -> dict[str, object]:
    """One row of the table for ``scheme``."""
    out = fp32.with_name(f"{scheme.name}.onnx")
    feeds = calibration_feeds(OnnxLM(fp32).shape) if scheme.static else ()
    quantize_graph(fp32, out, scheme, feeds)
    lm = OnnxLM(out)
    paths = greedy_paths(lm, problems)
    worst = max(worst_pair_sum(w) for w in int8_matmul_weights(onnx.load(str(out))).values())
    row: dict[str, object] = {
        "scheme": scheme.name,
        "agree": agreement(lm, ref),
        "same": _same(paths, ref),
        "accuracy": accuracy(paths, problems),
        "agree avx2": None,
        "same avx2": None,
        "accuracy avx2": None,
        "worst pair": worst,
        "can saturate": worst > INT16_MAX,
    }
    if not scheme.static:  # QDQ graphs become integer ops only inside ONNX Runtime
        avx2 = emulated_lm(out, saturate=True)
        paths = greedy_paths(avx2, problems[:avx2_problems])
        row["agree avx2"] = agreement(avx2, ref[:avx2_problems])
        row["same avx2"] = _same(paths, ref)
        row["accuracy avx2"] = accuracy(paths, problems[:avx2_problems])
    return row


def _same(paths: Sequence[tuple[list[int], int]], ref: Sequence[tuple[list[int], int]]) -> float:
    """Share of paths identical to the reference's."""
    return float(np.mean([a == b for a, b in zip(paths, ref, strict=False)]))


def main(argv: Sequence[str] | None = None) -> int:
    """Print the comparison table."""
    import torch

    from models.torch_backend import TorchLM, load_module

    ap = argparse.ArgumentParser(prog="python -m models.quant_compare", description=__doc__)
    ap.add_argument("--checkpoint", default="drafter", help="bundled name or checkpoint directory")
    ap.add_argument("--problems", type=int, default=500, help="held-out problems")
    ap.add_argument(
        "--avx2-problems", type=int, default=0, help="problems run in the AVX2 emulation (0: all)"
    )
    ap.add_argument("--schemes", nargs="*", default=list(SCHEMES), choices=list(SCHEMES))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    module = load_module(args.checkpoint)
    problems = task.generate(args.problems, task.HELDOUT_SEED)
    ref = greedy_paths(TorchLM(module), problems)
    print(f"torch fp32 accuracy {accuracy(ref, problems):.3f} on {len(problems)} problems")
    header = (
        "scheme",
        "agree",
        "same",
        "accuracy",
        "agree avx2",
        "same avx2",
        "accuracy avx2",
        "worst pair",
        "can saturate",
    )
    print(" | ".join(header))
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(module, Path(tmp) / "model.onnx", int8=False)
        for name in args.schemes:
            n_avx2 = args.avx2_problems or args.problems
            row = measure(SCHEMES[name], fp32, problems, ref, n_avx2)
            print(" | ".join(_cell(row[h]) for h in header), flush=True)
    return 0


def _cell(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


if __name__ == "__main__":
    raise SystemExit(main())
