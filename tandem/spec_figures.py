"""The token-speculation benchmark's report: targets, the JSON, the tables and the plot."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tandem.repeats import Spread, Target
from tandem.report import figure_row, median_and_error, print_table

TARGETS: dict[str, Target] = {
    "greedy_match": Target("==", 1.0),
    "mean_accepted_length": Target(">=", 2.5),
    "cloud_compute_ratio": Target("<=", 0.5),
    "batch_gain_8": Target(">=", 3.0),
    "overhead_ms_p50": Target("<=", 2.0),
    "onnx_fp32_speedup": Target(">=", 1.5),
    "int8_speedup": Target(">=", 1.2),
    "onnx_int8_agreement": Target(">=", 0.95),
}
THEORY_TOLERANCE = 0.10  # theory's accepted length within this share of the measured one

# Table rows, in order, with what each figure is.
ROWS: dict[str, str] = {
    "greedy_match": "speculative greedy output == target greedy",
    "mean_accepted_length": "1 + accepted/rounds; every round, positions before a stop",
    "acceptance_rate": "accepted / drafted, positions before a stop",
    "per_token_acceptance": "geometric MLE of a, every round",
    "unclipped_mean_accepted_length": "rounds not cut short (not last, all k drafted)",
    "theory_accepted_length": "(1-a^(k+1))/(1-a), a from the unclipped rounds",
    "cloud_compute_ratio": "cloud process CPU/token (all threads), spec / cloud-only",
    "cloud_model_compute_ratio": "model calls' CPU only, spec / cloud-only",
    "speculation_cloud_cpu_ms_per_token": "cloud process CPU ms per token, speculation",
    "cloud_only_cloud_cpu_ms_per_token": "cloud process CPU ms per token, cloud-only",
    "speculation_cloud_other_cpu_ms_per_token": "of which outside model calls (verify, "
    "sampling, servicer, gRPC)",
    "cloud_only_cloud_other_cpu_ms_per_token": "of which outside model calls, cloud-only",
    "cloud_idle_cpu_share": "cloud process CPU s per s while idle (background, for scale)",
    "tokens_per_s_ratio": "tokens/s on loopback, spec / cloud-only",
    "batch_gain_8": "gRPC, 8 sessions from another process: batched / --max-batch 1",
    "mean_batch_size_8": "rounds per verify pass, batched cloud",
    "load_client_cpu_share": "load process CPU s per s (near 1: the clients cap the rate)",
    "batch_gain_8_engine": "in-process engine, no transport: batched / one at a time",
    "overhead_ms_p50": "round trip - model time, one session (other process)",
    "overhead_ms_p95": "",
    "torch_fp32_ms_per_token": "drafter, one token a call",
    "onnx_fp32_ms_per_token": "",
    "onnx_int8_ms_per_token": "",
    "onnx_fp32_speedup": "torch fp32 -> ONNX Runtime fp32",
    "int8_speedup": "ONNX Runtime fp32 -> int8",
    "onnx_int8_speedup": "torch fp32 -> ONNX Runtime int8 (the product)",
    "onnx_fp32_agreement": "greedy agreement with torch, teacher-forced",
    "onnx_int8_agreement": "",
    "int8_vs_fp32_agreement": "int8 against ONNX Runtime fp32",
}

DEFINITIONS = {
    "rounds": "verify rounds as the cloud judged them, recorded at the wire; a draft counts its "
    "positions up to and including its first stop token",
    "unclipped": "rounds that are not their request's last and drafted all k positions: the "
    "rounds a geometric acceptance model describes",
    "survival": "per position i = 1..k, the share of rounds (that drafted i) whose i-th draft "
    "was accepted; theory a^i with a the per-token acceptance of the same rounds",
    "cloud_cpu": "CPU seconds of the cloud process over a pass (/proc/PID/stat, every thread: "
    "model, verification and sampling, servicer, gRPC), per generated token",
    "repeats": "each configuration runs `repeats` times interleaved; a figure is the median, "
    "its spread min-max; ratios pair the configurations repeat by repeat",
}


def int8_note(speedup: Spread | None) -> str:
    """What the int8 step earns over ONNX Runtime fp32, said plainly when it is nothing."""
    if speedup is None:
        return ""
    if speedup.median >= 1.05:
        return ""
    slower = " (slower in every repeat)" if speedup.high < 1.0 else ""
    return f"int8 adds nothing over ONNX Runtime fp32 here{slower}"


def judge(figures: Mapping[str, Spread | None]) -> dict[str, dict[str, Any]]:
    """Target and verdict of every figure that has a target; a missing figure misses it."""
    out = {
        key: {"target": str(t), "met": (f := figures.get(key)) is not None and t.met(f)}
        for key, t in TARGETS.items()
    }
    theory, measured = (
        figures.get("theory_accepted_length"),
        figures.get("unclipped_mean_accepted_length"),
    )
    close = theory is not None and measured is not None
    if close:
        assert theory is not None and measured is not None
        close = abs(theory.median - measured.median) <= THEORY_TOLERANCE * measured.median
    out["theory_accepted_length"] = {
        "target": f"within {THEORY_TOLERANCE:.0%} of unclipped",
        "met": close,
    }
    return out


def _max_gap(measured: list[float | None], theory: list[float] | None) -> float | None:
    """Largest |measured - theory| survival over the positions both have."""
    gaps = [abs(m - t) for m, t in zip(measured, theory or [], strict=False) if m is not None]
    return max(gaps) if gaps else None


def build_report(
    figures: Mapping[str, Spread | None],
    sweep: Mapping[int, Mapping[str, Any]],
    k: int,
    chosen: Mapping[str, Any],
) -> dict[str, Any]:
    """The JSON report: each figure's median at the top level, spreads, targets, survival at the
    chosen k, and the k sweep (medians, and ranges apart)."""
    report: dict[str, Any] = {"chosen_k": k}
    report.update({key: f.median if f is not None else None for key, f in figures.items()})
    report["spread"] = {key: f.as_dict() for key, f in figures.items() if f is not None}
    report["targets"] = judge(figures)
    report["notes"] = {"int8_speedup": int8_note(figures.get("int8_speedup"))}
    cs = chosen["spread"]
    report["survival"] = {
        "k": k,
        "unclipped": chosen["survival"],
        "theory": chosen["theory_survival"],
        "all_rounds": chosen["survival_all"],
        "rounds": cs["rounds"].median if "rounds" in cs else None,
        "unclipped_rounds": cs["unclipped_rounds"].median if "unclipped_rounds" in cs else None,
        "max_gap_to_theory": _max_gap(chosen["survival"], chosen["theory_survival"]),
    }
    report["k_sweep"] = {
        str(kk): {
            **{m: sp.median for m, sp in s["spread"].items()},
            "survival": s["survival"],
            "theory_survival": s["theory_survival"],
            "survival_all": s["survival_all"],
        }
        for kk, s in sweep.items()
    }
    report["k_sweep_spread"] = {
        str(kk): {m: sp.as_dict() for m, sp in s["spread"].items()} for kk, s in sweep.items()
    }
    report["definitions"] = DEFINITIONS
    return report


def _tables(report: Mapping[str, Any]) -> None:
    spreads, targets, notes = report["spread"], report["targets"], report["notes"]
    rows = {}
    for key, what in ROWS.items():
        t = targets.get(key, {})
        note = notes.get(key) or what
        rows[key] = figure_row(spreads.get(key), t.get("target", ""), t.get("met"), note)
    print_table("metric", rows, ["median", "spread", "n", "target", "met", "note"])
    s = report["survival"]
    print(
        f"\nper-position survival at k={s['k']} ({s['unclipped_rounds'] or 0:.0f} unclipped "
        f"rounds of {s['rounds'] or 0:.0f}; theory a^i, a of the unclipped rounds)"
    )
    print_table(
        "position",
        {
            str(i + 1): {"unclipped": u, "theory a^i": t, "all rounds": a}
            for i, (u, t, a) in enumerate(
                zip(s["unclipped"], s["theory"] or [None] * s["k"], s["all_rounds"], strict=True)
            )
        },
        ["unclipped", "theory a^i", "all rounds"],
    )
    print()
    cols = [
        "mean_accepted_length",
        "unclipped_mean_accepted_length",
        "theory_accepted_length",
        "unclipped_per_token_acceptance",
        "tokens_per_s",
        "cloud_cpu_ms_per_token",
    ]
    print_table("k", report["k_sweep"], cols)


def print_and_plot(report: Mapping[str, Any], out: Path) -> None:
    """Print the tables and write ``bench-spec.png`` into ``out``."""
    _tables(report)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep, ranges = report["k_sweep"], report["k_sweep_spread"]
    ks = sorted(sweep, key=int)
    x = [int(k) for k in ks]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    (a1, a2), (a3, a4) = axes
    for key, style, label in (
        ("mean_accepted_length", "o-", "measured, every round"),
        ("unclipped_mean_accepted_length", "^-", "measured, unclipped rounds"),
        ("theory_accepted_length", "s--", "theory (a of unclipped)"),
    ):
        med, err = median_and_error([ranges[k].get(key) for k in ks])
        a1.errorbar(x, med, yerr=err, fmt=style, capsize=3, label=label)
    a1.set(xlabel="draft length k", ylabel="mean accepted length", xticks=x)
    a1.legend(fontsize=8)
    med, err = median_and_error([ranges[k].get("tokens_per_s") for k in ks])
    a2.errorbar(x, med, yerr=err, fmt="o-", capsize=3)
    a2.set(xlabel="draft length k", ylabel="tokens/s (loopback)", xticks=x)
    s = report["survival"]
    pos = list(range(1, s["k"] + 1))
    a3.plot(pos, s["all_rounds"], "o:", label="measured, every round")
    a3.plot(pos, s["unclipped"], "^-", label="measured, unclipped rounds")
    if s["theory"]:
        a3.plot(pos, s["theory"], "s--", label="theory a^i")
    a3.set(xlabel=f"draft position i (k={s['k']})", ylabel="survival", ylim=(0, 1.02), xticks=pos)
    a3.legend(fontsize=8)
    names = ["torch_fp32", "onnx_fp32", "onnx_int8"]
    med, err = median_and_error([report["spread"].get(f"{n}_ms_per_token") for n in names])
    a4.bar(names, med, yerr=err, capsize=4, color=["#4C72B0", "#DD8452", "#55A868"])
    a4.set(ylabel="drafter ms per token")
    for i, (v, up) in enumerate(zip(med, err[1], strict=True)):
        a4.annotate(f"{v:.3g}", (i, v + up), ha="center", va="bottom", fontsize=8)
    reps = report.get("config", {}).get("repeats", "?")
    fig.suptitle(f"Token speculation: int8 ONNX drafter, torch target (median, min-max of {reps})")
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "bench-spec.png", dpi=110)
    plt.close(fig)
    print(f"plot: {out / 'bench-spec.png'}")
