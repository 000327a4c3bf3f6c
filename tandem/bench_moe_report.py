"""The table and the plot of ``tandem bench moe``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tandem.report import print_table

CONFIGS = ("on-demand", "cache", "cache+prefetch", "full")


def _m(v: Any) -> float:
    return float(v["median"]) if isinstance(v, dict) else float(v)


def _spread(v: dict[str, Any]) -> str:
    return f"{v['median']:.3g} [{v['min']:.3g}, {v['max']:.3g}]"


def print_report(r: dict[str, Any]) -> None:
    """Headline keys with their targets, then one row per configuration and scale."""
    print(f"\nMoE offloading ({r['emulated']}; emulated)")
    print(f"held-out accuracy: MoE {r['moe_accuracy']:.3f}, dense target {r['dense_accuracy']}")
    head = {
        "hit_rate": f"{r['hit_rate']:.3f} ({r['policy']}, chosen on a calibration trace)",
        "belady_hit_rate": f"{r['belady_hit_rate']:.3f}",
        "hit_rate_gap": f"{r['hit_rate_gap']:.3f}",
        "prediction_recall": f"{r['prediction_recall']:.3f}",
        "decode_speedup_vs_on_demand": _spread(r["decode_speedup_vs_on_demand"]),
        "remote_compute_share": _spread(r["remote_compute_share"]),
        "remote_compute_speedup_vs_fetch_only": _spread(r["remote_compute_speedup_vs_fetch_only"]),
        "lossless_max_abs_diff": f"{r['lossless_max_abs_diff']:g}",
    }
    rows = {
        k: {"value (median [min, max])": v, "target": r["targets"].get(k, {}).get("target", "")}
        for k, v in head.items()
    }
    for k, row in rows.items():
        if k in r["targets"]:
            row["met"] = "yes" if r["targets"][k]["met"] else "NO"
    print_table("key", rows, ["value (median [min, max])", "target", "met"])
    live = {
        f"live {n}": {
            "tok/s": _spread(r["live"][n]["decode_tokens_per_s"]),
            "hit": _m(r["live"][n]["hit_rate"]),
            "late": _m(r["live"][n]["late_hit_rate"]),
            "remote": _m(r["live"][n]["remote_share"]),
            "stall ms/tok": 1e3 * _m(r["live"][n]["stall_s_per_token"]),
        }
        for n in CONFIGS
    }
    for scale, key in (("replay real", "replay_real_sizes"), ("scaled", "scaled")):
        src = r[key]["configs"] if key == "scaled" else r[key]
        for n in CONFIGS:
            c = src[n]
            live[f"{scale} {n}"] = {
                "tok/s": f"{c['decode_tokens_per_s']:.3g}",
                "hit": c["hit_rate"],
                "late": c["late_hit_rate"],
                "remote": c["remote_share"],
                "stall ms/tok": 1e3 * c["stall_s_per_token"],
            }
    print()
    print_table("config (emulated)", live, ["tok/s", "hit", "late", "remote", "stall ms/tok"])
    print(f"scaled: {r['scaled']['emulated']}")


def plot(r: dict[str, Any], path: Path) -> Path:
    """Hit rate against budget per policy with Belady; decode tokens/s per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(16, 4.8))
    for name, curve in r["policy_curves"].items():
        xs = [float(x) for x in curve]
        style = {"color": "black", "linestyle": "--"} if name == "belady" else {"marker": "o"}
        a.plot(xs, list(curve.values()), label=name, **style)
    a.axvline(r["config"]["budget_share"], color="grey", linewidth=0.8)
    a.set_xlabel("budget (share of all expert bytes)")
    a.set_ylabel("hit rate (demand paging, held-out trace)")
    a.set_title("Hit rate vs budget, Belady = MIN bound")
    a.legend()
    live = r["live"]
    meds = [live[n]["decode_tokens_per_s"]["median"] for n in CONFIGS]
    lows = [m - live[n]["decode_tokens_per_s"]["min"] for m, n in zip(meds, CONFIGS, strict=True)]
    highs = [live[n]["decode_tokens_per_s"]["max"] - m for m, n in zip(meds, CONFIGS, strict=True)]
    b.bar(CONFIGS, meds, yerr=[lows, highs], capsize=4)
    b.set_ylabel("decode tokens/s (median, min-max)")
    b.set_title(f"Live, real sizes (emulated {r['emulated']})", fontsize=9)
    sc = r["scaled"]["configs"]
    c.bar(CONFIGS, [sc[n]["decode_tokens_per_s"] for n in CONFIGS], color="tab:orange")
    c.set_yscale("log")
    c.set_ylabel("decode tokens/s of the trace's 4 layers (log)")
    c.set_title(f"Scaled (emulated): {r['config']['profile']}", fontsize=9)
    for ax in (b, c):
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle("tandem bench moe: expert offloading to a cloud expert server (emulated)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
