"""The report of ``tandem bench edge-cloud``: JSON figures, tables and plots, each labelled with
the emulated devices and link it was measured under."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from node_runtime.profiles import get_profile, sources
from simulations.link.profiles import get_profile as get_link
from tandem.edge_cloud_grid import (
    CLOUD_BATCH,
    PIPELINE_MIN_RTT_MS,
    POLICY_NAMES,
    DevicePair,
    EdgeCloudConfig,
    capacity_figures,
    emulated_label,
    grid_figures,
    link_spec,
)
from tandem.repeats import Spread, Target
from tandem.report import FIGURE_COLUMNS, figure_row, median_and_error, print_table

TARGETS = {
    "pipelined_vs_plain": Target("<=", 0.75),
    "server_capacity_gain_32": Target(">=", 2.5),
    "adaptive_worst_cell": Target("<=", 1.05),
}
HEADLINE_SESSIONS = 32

CAPACITY_HOW = (
    "each edge session is its own emulated device: a load process (tandem.edge_cloud_load) runs "
    "N sessions, each with its own emulated drafter (own device lock, padded to the edge "
    "profile) over one shared copy of the real bundled drafter, running the edge's speculation "
    "code against the cloud through the link emulator; cloud-only sessions send the same prompts "
    "to the cloud's Generate (continuously batched, up to {batch} generations a pass). Cloud "
    "device-seconds are the cloud's emulated_device_s (Metrics) after minus before each "
    "configuration. Each session runs {requests} requests back to back, so the last requests "
    "run with fewer sessions beside them."
)


def _profiles(cfg: EdgeCloudConfig) -> dict[str, Any]:
    names = {n for pair in cfg.grid_pairs for n in (pair.edge, pair.cloud)}
    out = {}
    for name in sorted(names):
        p = get_profile(name)
        out[name] = {"device": p.device, "model": p.model, "role": p.role, "sources": sources(p)}
    return out


def _links(cfg: EdgeCloudConfig) -> dict[str, Any]:
    out = {}
    for name in dict.fromkeys((*cfg.links, cfg.capacity_link)):
        out[name] = {
            "rtt_ms": link_spec(name).rtt_ms,
            "spec": link_spec(name).to_dict(),
            "description": get_link(name).description,
            "source": get_link(name).source,
            "note": "connection resets of the profile disabled (they measure failover)",
        }
    return out


def _grid_json(
    cfg: EdgeCloudConfig, runs: Mapping[str, Any], rtts: Mapping[str, float]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in cfg.grid_pairs:
        cellmap: dict[str, Any] = {"label": emulated_label(pair)}
        for link, cell in runs[pair.name].items():
            entry: dict[str, Any] = {"label": emulated_label(pair, link), "rtt_ms": rtts[link]}
            for policy, reps in cell.items():
                ms = Spread.of([r["ms_per_token"] for r in reps]).as_dict()
                entry[policy] = {"ms_per_token": ms, "runs": reps}
            cellmap[link] = entry
        out[pair.name] = cellmap
    return out


def _capacity(
    cfg: EdgeCloudConfig, pair: DevicePair, results: Sequence[dict[str, Any]]
) -> dict[str, Any] | None:
    if not results:
        return None
    by: dict[tuple[int, str], list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        by[(int(r["sessions"]), r["mode"])].append(r)
    return {
        "label": emulated_label(pair, cfg.capacity_link),
        "how": CAPACITY_HOW.format(batch=CLOUD_BATCH, requests=cfg.requests_per_session),
        "sessions": {
            str(n): capacity_figures(by[(n, "speculation")], by[(n, "cloud-only")])
            for n in cfg.sessions
        },
        "infeasible_calls": {
            "cloud": sum(r["cloud_infeasible_calls"] for r in results),
            "edges": sum(r["edge_infeasible_calls"] for r in results),
            "edge_calls": sum(r["edge_calls"] for r in results),
        },
        "runs": results,
    }


def build_report(
    cfg: EdgeCloudConfig,
    runs: Mapping[str, Any],
    rtts: Mapping[str, float],
    capacity_runs: Mapping[str, Sequence[dict[str, Any]]],
    counters: Mapping[str, Any],
    wall_s: float,
) -> dict[str, Any]:
    """The JSON report: keys with targets, the grid, capacity, sources and infeasible calls.

    ``capacity_runs`` maps a capacity pair's name to its load runs; the headline capacity keys
    are the first pair's, and every pair's gain is under ``server_capacity_gain_32_by_pair``.
    """
    grid = grid_figures(runs, rtts)
    caps = {p.name: _capacity(cfg, p, capacity_runs.get(p.name, ())) for p in cfg.capacity_pairs}
    cap = caps.get(cfg.capacity_pair.name)
    head = cap["sessions"].get(str(HEADLINE_SESSIONS)) if cap else None
    report: dict[str, Any] = {
        "emulated": [emulated_label(p) for p in cfg.grid_pairs],
        "config": {
            "quick": cfg.quick,
            "repeats": cfg.repeats,
            "problems_per_run": cfg.problems,
            "max_new_tokens": cfg.max_new,
            "pairs": [p.name for p in cfg.grid_pairs],
            "links_rtt_ms": dict(rtts),
            "policies": list(POLICY_NAMES),
            "capacity_pair": cfg.capacity_pair.name,
            "capacity_pairs": [p.name for p in cfg.capacity_pairs],
            "capacity_link": cfg.capacity_link,
            "capacity_sessions": list(cfg.sessions),
            "wall_s": wall_s,
        },
        **grid,
        "server_capacity_gain_32": head["capacity_gain"] if head else None,
        "cloud_cost_per_token_ratio": head["cloud_cost_per_token_ratio"] if head else None,
        "delivered_tokens_per_s_32": head["delivered_tokens_per_s"] if head else None,
        "capacity_acceptance_rate": head["acceptance_rate"] if head else None,
        "server_capacity_gain_32_by_pair": {
            name: c["sessions"][str(HEADLINE_SESSIONS)]["capacity_gain"]
            for name, c in caps.items()
            if c and str(HEADLINE_SESSIONS) in c["sessions"]
        },
        "capacity": cap,
        "capacity_by_pair": caps,
        "targets": {k: str(t) for k, t in TARGETS.items()},
        "profiles": _profiles(cfg),
        "links": _links(cfg),
        "infeasible_calls": counters,
        "grid": _grid_json(cfg, runs, rtts),
    }
    report["met"] = {k: _met(report, k) for k in TARGETS}
    return report


def _met(report: Mapping[str, Any], key: str) -> bool | None:
    v = report.get(key)
    if v is None:
        return None
    return TARGETS[key].met(v["median"] if isinstance(v, dict) else float(v))


# --------------------------------------------------------------------------- terminal


def print_report(report: Mapping[str, Any]) -> None:
    """One table per pair (ms per token by link and policy), then the keys and the capacity."""
    rtts = report["config"]["links_rtt_ms"]
    for pair, cells in report["grid"].items():
        print(f"\n{cells['label']} (ms per token, median of {report['config']['repeats']})")
        rows = {}
        for link, rtt in rtts.items():
            cell = cells[link]
            row: dict[str, object] = {"rtt_ms": rtt}
            row.update({p: cell[p]["ms_per_token"]["median"] for p in POLICY_NAMES})
            row["best/cloud"] = report["best_vs_cloud_only"][pair][link]["median"]
            row["adaptive/best"] = report["adaptive_vs_best_static"][pair][link]["median"]
            row["adaptive ran"] = _modes(cell["adaptive"]["runs"])
            rows[link] = row
        cols = ["rtt_ms", *POLICY_NAMES, "best/cloud", "adaptive/best", "adaptive ran"]
        print_table("link", rows, cols)
        c = report["crossover_rtt"][pair]
        where = f"{c['rtt_ms']:.0f} ms" if c["rtt_ms"] is not None else "outside the grid"
        print(f"crossover RTT: {where} ({c['how']})")
    _print_keys(report)


def _modes(runs: list[dict[str, Any]]) -> str:
    total: dict[str, int] = defaultdict(int)
    for r in runs:
        for k, v in r["modes"].items():
            total[k] += v
    return ",".join(f"{k}:{v}" for k, v in sorted(total.items()))


def _print_keys(report: Mapping[str, Any]) -> None:
    cap = report["capacity"]
    label = cap["label"] if cap else "no capacity phase"
    rows = {
        "pipelined_vs_plain": figure_row(
            report["pipelined_vs_plain"],
            str(TARGETS["pipelined_vs_plain"]),
            report["met"]["pipelined_vs_plain"],
            f"median over cells with RTT >= {PIPELINE_MIN_RTT_MS:g} ms, every pair",
        ),
        "server_capacity_gain_32": figure_row(
            report["server_capacity_gain_32"],
            str(TARGETS["server_capacity_gain_32"]),
            report["met"]["server_capacity_gain_32"],
            label,
        ),
        "cloud_cost_per_token_ratio": figure_row(report["cloud_cost_per_token_ratio"], note=label),
        "adaptive_worst_cell": {
            **figure_row(
                None, str(TARGETS["adaptive_worst_cell"]), report["met"]["adaptive_worst_cell"]
            ),
            "median": report["adaptive_worst_cell"],
            "note": report["adaptive_worst_cell_at"],
        },
        "cells_won": {"median": report["cells_won"], "note": f"of {report['cells']} cells"},
    }
    print()
    print_table("figure", rows, FIGURE_COLUMNS)
    for cap in filter(None, report["capacity_by_pair"].values()):
        print(f"\n{cap['label']}: capacity by concurrent edge sessions")
        crow = {}
        for n, f in cap["sessions"].items():
            crow[n] = {
                "spec tok/dev-s": f["tokens_per_device_s"]["speculation"]["median"],
                "cloud tok/dev-s": f["tokens_per_device_s"]["cloud-only"]["median"],
                "gain": f["capacity_gain"]["median"],
                "spec tok/s": f["delivered_tokens_per_s"]["speculation"]["median"],
                "cloud tok/s": f["delivered_tokens_per_s"]["cloud-only"]["median"],
                "acceptance": (f["acceptance_rate"] or {}).get("median"),
                "spec tok/pass": f["tokens_per_cloud_pass"].get("speculation", {}).get("median"),
                "cloud tok/pass": f["tokens_per_cloud_pass"].get("cloud-only", {}).get("median"),
                "rounds/verify pass": (f["rounds_per_verify_pass"] or {}).get("median"),
            }
        print_table("sessions", crow, list(next(iter(crow.values()))))
        inf = cap["infeasible_calls"]
        print(
            f"capacity phase infeasible calls: cloud {inf['cloud']:.0f}, edges {inf['edges']:.0f}"
            f" of {inf['edge_calls']:.0f}"
        )
    for pair, c in report["infeasible_calls"].items():
        e, cl = c["edge"], c["cloud"]
        print(
            f"{pair}: infeasible calls edge {e['emulated_infeasible_calls']:.0f} of"
            f" {e['emulated_calls']:.0f}, cloud {cl['emulated_infeasible_calls']:.0f} of"
            f" {cl['emulated_calls']:.0f}"
        )


# --------------------------------------------------------------------------- plots


def plot(report: Mapping[str, Any], out_dir: Path) -> None:
    """ms per token against RTT (a panel per pair, a line per policy), and throughput against
    the number of edge sessions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    rtts = report["config"]["links_rtt_ms"]
    pairs = list(report["grid"])
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.2 * len(pairs), 4.2), squeeze=False)
    xs = list(rtts.values())
    for ax, pair in zip(axes[0], pairs, strict=True):
        cells = report["grid"][pair]
        for policy in POLICY_NAMES:
            med, err = median_and_error([cells[link][policy]["ms_per_token"] for link in rtts])
            ax.errorbar(
                xs,
                med,
                yerr=err,
                marker="o",
                capsize=3,
                label=policy,
                linewidth=2.2 if policy == "adaptive" else 1.2,
            )
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(NullLocator())  # only the links' RTTs are labelled
        ax.set_xticks(xs, [f"{link}\n{r:.0f}" for link, r in rtts.items()], fontsize=7)
        ax.set_xlabel("link, RTT (ms)")
        ax.set_title(cells["label"].replace(" -> ", "\n-> "), fontsize=8)
        ax.set_ylabel("ms per generated token")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_dir / "edge-cloud-latency.png", dpi=110)
    plt.close(fig)
    caps = [c for c in report["capacity_by_pair"].values() if c]
    if caps:
        _plot_capacity(caps, out_dir)
    print(f"plots: {out_dir / 'edge-cloud-latency.png'}, {out_dir / 'edge-cloud-capacity.png'}")


def _plot_capacity(caps: Sequence[Mapping[str, Any]], out_dir: Path) -> None:
    """A row per capacity pair: delivered tokens/s and tokens per cloud device-second."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(caps), 2, figsize=(10, 4 * len(caps)), squeeze=False)
    for row, cap in zip(axes, caps, strict=True):
        ns = [int(n) for n in cap["sessions"]]
        for ax, key, ylabel in (
            (row[0], "delivered_tokens_per_s", "delivered tokens/s (all sessions)"),
            (row[1], "tokens_per_device_s", "tokens per emulated cloud device-second"),
        ):
            for mode in ("speculation", "cloud-only"):
                med, err = median_and_error([cap["sessions"][str(n)][key][mode] for n in ns])
                ax.errorbar(ns, med, yerr=err, marker="o", capsize=3, label=mode)
            ax.set_xscale("log", base=2)
            ax.set_xticks(ns, [str(n) for n in ns])
            ax.set_xlabel("concurrent edge sessions")
            ax.set_ylabel(ylabel)
            ax.set_title(cap["label"], fontsize=8)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "edge-cloud-capacity.png", dpi=110)
    plt.close(fig)
