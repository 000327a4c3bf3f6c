"""The table and the plot of ``tandem bench spec --cloud-engine vllm`` (``bench_spec_vllm``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

RATIO_TARGET = 0.6  # cloud_ms_per_token_ratio the issue asks for, at most


def _fmt(s: dict[str, Any]) -> str:
    return f"{s['median']:.3f} [{s['min']:.3f}, {s['max']:.3f}]"


def print_report(r: dict[str, Any]) -> None:
    rows = [
        ("greedy_match (vs vLLM greedy)", _fmt(r["greedy_match"]), "1.0"),
        ("cloud_ms_per_token_ratio", _fmt(r["cloud_ms_per_token_ratio"]), "<= 0.6"),
        ("  speculation ms/token", _fmt(r["cloud_ms_per_token"]["speculation"]), ""),
        ("  vLLM alone ms/token", _fmt(r["cloud_ms_per_token"]["vllm_alone"]), ""),
        ("cloud CPU per token, spec / alone", _fmt(r["cloud_cpu_per_token_ratio"]), ""),
        ("server_throughput_gain_8", _fmt(r["server_throughput_gain_8"]), "> 1"),
        ("  tokens per cloud CPU s, 8: spec / alone", _fmt(r["server_cpu_efficiency_gain_8"]), ""),
        ("mean_accepted_length", f"{r['mean_accepted_length']:.3f}", f"k={r['k']}"),
    ]
    surv = r["acceptance"]["survival"]
    rows.append(("survival by position", " ".join(f"{v:.2f}" for v in surv), ""))
    c = r["round_ms_vs_context"]
    for i, n in enumerate(c["contexts"]):
        rows.append(
            (
                f"round ms @ {n} (reuse | rescore | alone/token)",
                f"{c['prefix_reuse_ms'][i]['median']:.1f} | {c['rescore_ms'][i]['median']:.1f}"
                f" | {c['vllm_alone_ms_per_token'][i]['median']:.1f}",
                "",
            )
        )
    rows.append(
        (
            "switch context (reuse, rescore)",
            str((c["switch_context_prefix_reuse"], c["switch_context_rescore"])),
            "",
        )
    )
    for name, s in r["sampled_statistics"].items():
        rows.append(
            (
                f"sampled {name} ({s['rounds']} rounds)",
                f"p={s['pvalue']:.3g} control p={s['negative_control_pvalue']:.3g}",
                "p > 1e-3, control < 1e-3",
            )
        )
    width = max(len(a) for a, _, _ in rows)
    print(f"{'figure (median [min, max])'.ljust(width)}  value  target")
    for a, b, t in rows:
        print(f"{a.ljust(width)}  {b}  {t}")


def plot_report(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = r["round_ms_vs_context"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    n = c["contexts"]
    for key, label in (
        ("prefix_reuse_ms", "round, prefix cache read"),
        ("rescore_ms", "round, context rescored"),
    ):
        med = [s["median"] for s in c[key]]
        err = [
            [m - s["min"] for m, s in zip(med, c[key], strict=True)],
            [s["max"] - m for m, s in zip(med, c[key], strict=True)],
        ]
        left.errorbar(n, med, yerr=err, marker="o", capsize=3, label=label)
    even = [s["median"] * c["tokens_per_round"] for s in c["vllm_alone_ms_per_token"]]
    left.plot(n, even, "k--", label="break-even: vLLM alone x tokens/round")
    left.set_xlabel("context tokens")
    left.set_ylabel("ms (log scale)")
    left.set_yscale("log")
    left.set_title(f"verify round cost (k={r['k']}), vLLM on CPU")
    left.legend(fontsize=8)
    keys = ("greedy_match", "cloud_ms_per_token_ratio", "server_throughput_gain_8")
    meds = [r[k]["median"] for k in keys]
    errs = [
        [m - r[k]["min"] for m, k in zip(meds, keys, strict=True)],
        [r[k]["max"] - m for m, k in zip(meds, keys, strict=True)],
    ]
    right.bar(range(3), meds, yerr=errs, capsize=4)
    right.axhline(1.0, color="k", lw=0.5)
    right.axhline(RATIO_TARGET, color="r", lw=0.5, ls=":")
    right.set_xticks(
        range(3), ["greedy match", "cloud ms/token\nspec / alone", "tokens/s, 8\nspec / alone"]
    )
    right.set_title(f"median of {r['config']['repeats']} interleaved repeats")
    fig.suptitle("SmolLM2-135M in vLLM, int8 ONNX drafter; this 2-core CPU, not emulated")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")
