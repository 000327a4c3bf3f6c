"""``tandem drafters``: export real checkpoints for the edge and measure them.

    tandem drafters export hf:FILE.gguf [--out DIR] [--max-len N] [--fp32]
    tandem drafters bench hf:FILE.gguf [--export-dir DIR] [--prompts N] [--max-new N]
    tandem drafters uad --target hf:DIR --drafter onnx:DIR [--k 4]

Run the two benchmarks under ``flock /tmp/tandem-bench.lock`` (they take minutes of CPU).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tandem.report import figure_row, median_and_error, print_table


def add_parser(subparsers: Any) -> None:
    """Add ``drafters`` with sub-commands ``export``, ``bench`` and ``uad``."""
    p = subparsers.add_parser("drafters", help="real-checkpoint drafters: ONNX export, benchmarks")
    sub = p.add_subparsers(dest="drafters_command", required=True, metavar="COMMAND")
    e = sub.add_parser("export", help="export a Llama-family checkpoint to ONNX (fp32 + int8)")
    e.add_argument("source", help="hf:DIR or FILE.gguf")
    e.add_argument("--out", default="", help="output directory (default runs/onnx/NAME)")
    e.add_argument("--max-len", type=int, default=2048, help="longest sequence a session holds")
    e.add_argument("--fp32", action="store_true", help="skip int8 quantization")
    e.add_argument(
        "--int8-scheme", default="blockwise-8bit", help="blockwise-8bit or a models.quantize scheme"
    )
    e.set_defaults(func=_export)
    b = sub.add_parser("bench", help="transformers fp32 vs ONNX fp32/int8: ms/token, agreement")
    b.add_argument("source", help="hf:DIR or FILE.gguf (the transformers fp32 reference)")
    b.add_argument("--export-dir", default="", help="its export (default runs/onnx/NAME; made)")
    _common(b, "runs/drafters-bench")
    b.set_defaults(func=_bench)
    u = sub.add_parser("uad", help="a drafter of another family drafting as text, vs target alone")
    u.add_argument("--target", required=True, help="target model spec (e.g. hf:DIR)")
    u.add_argument("--drafter", required=True, help="drafter model spec (e.g. onnx:DIR)")
    u.add_argument("--k", type=int, default=4, help="drafted tokens per round")
    u.add_argument(
        "--over-grpc",
        action="store_true",
        help="the target in a cloud node process, the drafter as an edge over gRPC (text drafts)",
    )
    _common(u, "runs/drafters-uad")
    u.set_defaults(func=_uad)


def _common(p: argparse.ArgumentParser, out: str) -> None:
    p.add_argument("--prompts", type=int, default=0, help="first N prompts of the set (0: all)")
    p.add_argument("--max-new", type=int, default=32, help="tokens generated per prompt")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats (>= 3)")
    p.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime threads")
    p.add_argument("--out", default=out, help="folder for the JSON and the plot")


def _export(args: argparse.Namespace) -> int:
    from models.llama_onnx import export_llama

    src = args.source.removeprefix("hf:")
    path = export_llama(
        src, args.out or None, not args.fp32, max_len=args.max_len, scheme=args.int8_scheme
    )
    print(f"exported {path}")
    return 0


def _prompts(n: int) -> list[Any]:
    from models.prompts import load_prompts

    prompts = load_prompts()
    return prompts[:n] if n else prompts


def _bench(args: argparse.Namespace) -> int:
    import torch

    from models.hf_backend import load_hf
    from models.llama_onnx import default_out_dir, export_llama
    from models.llama_quant import quantize_llama
    from models.onnx_lm import load_export, read_config
    from models.quantize import DEFAULT
    from tandem.drafters_bench import AGREEMENT_TARGET, SPEEDUP_TARGET, export_bench

    torch.set_num_threads(args.threads)
    src = args.source.removeprefix("hf:")
    d = Path(args.export_dir) if args.export_dir else default_out_dir(src)
    if not (d / "model.int8.onnx").is_file():
        export_llama(src, d)
    dynamic = d / "model.int8-dynamic.onnx"  # the bundled drafter's scheme, for comparison
    if not dynamic.is_file():
        quantize_llama(d / "model.onnx", dynamic, DEFAULT.name)
    hf, tok = load_hf(src)
    models = {
        "transformers fp32": hf,
        "onnx fp32": load_export(d, int8=False, threads=args.threads)[0],
        "onnx int8": load_export(d, int8=True, threads=args.threads)[0],
        "onnx int8 dynamic": load_export(dynamic, threads=args.threads)[0],
    }
    rep = export_bench(
        models, "transformers fp32", tok, _prompts(args.prompts), args.max_new, args.repeats
    )
    rep.update(source=src, export_dir=str(d), threads=args.threads, emulated=False)
    rep["int8"] = read_config(d).get("int8")  # which scheme "onnx int8" is, and its AVX2 note
    rows = {}
    for name, r in rep["rows"].items():
        onnx = name != "transformers fp32"
        rows[f"{name} ms/token"] = figure_row(r["decode_ms_per_token"])
        rows[f"{name} speedup"] = figure_row(
            r["speedup_vs_reference"],
            str(SPEEDUP_TARGET) if onnx else "",
            SPEEDUP_TARGET.met(r["speedup_vs_reference"]["median"]) if onnx else None,
        )
        rows[f"{name} agreement"] = figure_row(
            None,
            str(AGREEMENT_TARGET) if onnx else "",
            AGREEMENT_TARGET.met(r["greedy_agreement"]) if onnx else None,
            f"{r['greedy_agreement']:.4f} over {rep['positions']} positions; "
            f"same output {r['same_output']:.3f}",
        )
    print_table("figure (not emulated)", rows, ("median", "spread", "n", "target", "met", "note"))
    _write(
        rep,
        Path(args.out),
        "decode_ms_per_token",
        "greedy_agreement",
        "export",
        AGREEMENT_TARGET.bound,
    )
    return 0


def _uad(args: argparse.Namespace) -> int:
    import importlib.util

    from models.loader import load_lm
    from tandem.drafters_bench import uad_bench

    if importlib.util.find_spec("torch") is not None:
        import torch

        torch.set_num_threads(args.threads)
    drafter = load_lm(args.drafter)
    if args.over_grpc:
        from tandem.uad_wire import wire_bench

        rep = wire_bench(
            args.target,
            drafter,
            _prompts(args.prompts),
            args.max_new,
            args.k,
            args.repeats,
            args.threads,
        )
    else:
        target = load_lm(args.target)
        rep = uad_bench(target, drafter, _prompts(args.prompts), args.max_new, args.k, args.repeats)
    rep.update(target_spec=args.target, drafter_spec=args.drafter, emulated=False)
    rows = {}
    for name, r in rep["rows"].items():
        note = f"lossless {r['lossless']}"
        if r["acceptance"] is not None:
            note += f"; acceptance {r['acceptance']:.3f}; MAL {r['mean_accepted_length']:.2f}"
        rows[f"{name} ms/token"] = figure_row(r["ms_per_token"], note=note)
        rows[f"{name} speedup"] = figure_row(r["speedup_vs_target_alone"])
    print(f"target {rep['target']}  drafter {rep['drafter']}  (not emulated)")
    print_table("figure", rows, ("median", "spread", "n", "note"))
    stem = "uad-grpc" if args.over_grpc else "uad"
    _write(rep, Path(args.out), "ms_per_token", "speedup_vs_target_alone", stem, 1.0, "break-even")
    return 0


def _write(
    rep: dict[str, Any],
    out: Path,
    timed: str,
    second: str,
    stem: str,
    line: float | None = None,
    label: str = "target",
) -> None:
    """JSON and a two-panel plot (median with min-max bars; the second figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(rep, indent=2))
    names = list(rep["rows"])
    med, err = median_and_error([rep["rows"][n][timed] for n in names])
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.bar(names, med, yerr=err, capsize=4, color="#4C72B0")
    a.set_title(f"{timed.replace('_', ' ')} (median, min-max; this CPU)")
    vals = [rep["rows"][n][second] for n in names]
    vals = [v["median"] if isinstance(v, dict) else v for v in vals]
    b.bar(names, vals, color="#55A868")
    b.set_title(second.replace("_", " "))
    if line is not None:
        b.axhline(line, color="#C44E52", linestyle="--", label=f"{label} {line:g}")
        b.legend(loc="lower right")
    for ax in (a, b):
        ax.tick_params(axis="x", rotation=15)
    fig.tight_layout()
    fig.savefig(out / f"{stem}.png", dpi=110)
    plt.close(fig)
    print(f"wrote {out / f'{stem}.json'} and {out / f'{stem}.png'}")
