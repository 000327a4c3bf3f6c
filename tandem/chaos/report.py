"""The chaos benchmark's figures: from records and results to the JSON keys, the table, the plot."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tandem.chaos.faults import FaultResult
from tandem.chaos.load import Record
from tandem.report import print_table

# Faults only keepalive can find (the peer's kernel keeps the TCP connection up, or the link
# holds the bytes): the dead-peer figure is taken over these. A kill -9 is found at once (RST).
KEEPALIVE_FAULTS = ("sigstop_cloud", "blackhole_link")
EMULATED = {"blackhole_link": "emulated (link emulator, simulations/link)"}


def p95(values: Sequence[float]) -> float | None:
    """Nearest-rank 95th percentile (of 9 values, the largest), None when empty."""
    if not values:
        return None
    s = sorted(values)
    return s[max(0, math.ceil(0.95 * len(s)) - 1)]


def request_figures(records: Sequence[Record], faults: Sequence[FaultResult]) -> dict[str, Any]:
    """Lost, hung and hit requests over every record of the fault scenarios."""
    hit_ids = {i for f in faults for i in f.hit}
    lost = [r for r in records if r.outcome in ("open", "NO_REPLY") or not r.clean]
    failed = [r for r in records if r.outcome != "ok" and r.clean]
    hit = [r for r in records if r.request_id in hit_ids]
    outcomes: dict[str, int] = {}
    for r in hit:
        key = r.outcome if r.outcome != "ok" else ("degraded" if r.degraded else "completed")
        outcomes[key] = outcomes.get(key, 0) + 1
    return {
        "requests_total": len(records),
        "lost_requests": len(lost),
        "hung_requests": sum(r.hung for r in records),
        "failed_clean": len(failed),
        "failed_by_status": _count(r.outcome for r in failed),
        "requests_hit_by_faults": len(hit) / len(records) if records else 0.0,
        "requests_hit_by_faults_count": len(hit),
        "hit_requests_outcomes": outcomes,
        "hit_requests_lost": sum(1 for r in hit if r in lost),
        "hit_open_at_fault": sum(int(f.extra.get("hit_open_at_fault", 0)) for f in faults),
        "lost_examples": [r.as_json() for r in lost[:10]],
    }


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return out


def detection_samples(faults: Sequence[FaultResult]) -> dict[str, list[float]]:
    """Seconds from fault to detection, per side: the edge logging the cloud lost, and the cloud
    freeing the sessions of a cut-off edge."""
    out: dict[str, list[float]] = {"edge": [], "cloud": [], "kill9_edge": []}
    for f in faults:
        if f.scenario in KEEPALIVE_FAULTS:
            if f.detect_s is not None:
                out["edge"].append(f.detect_s)
            if f.cloud_detect_s is not None:
                out["cloud"].append(f.cloud_detect_s)
        elif f.scenario.startswith("kill9") and f.detect_s is not None:
            out["kill9_edge"].append(f.detect_s)
    return out


def scenario_rows(faults: Sequence[FaultResult], records: Sequence[Record]) -> dict[str, Any]:
    """Per scenario: runs, requests, hit, hit and lost, detection."""
    rows: dict[str, dict[str, Any]] = {}
    by_id = {r.request_id: r for r in records}
    for f in faults:
        row = rows.setdefault(
            f.scenario,
            {"runs": 0, "requests": 0, "hit": 0, "hit_lost": 0, "open_at_fault": 0, "detect_s": []},
        )
        row["runs"] += 1
        row["requests"] += f.requests
        row["hit"] += len(f.hit)
        row["open_at_fault"] += int(f.extra.get("hit_open_at_fault", 0))
        row["hit_lost"] += sum(1 for i in f.hit if i in by_id and not by_id[i].clean)
        if f.detect_s is not None:
            row["detect_s"].append(round(f.detect_s, 3))
        row["emulated"] = EMULATED.get(f.scenario, "")
    return rows


def print_report(report: dict[str, Any]) -> None:
    """The per-scenario table, then every key with its target."""
    rows = {
        name: {
            "runs": r["runs"],
            "requests": r["requests"],
            "hit": r["hit"],
            "hit@fault": r["open_at_fault"],
            "hit lost": r["hit_lost"],
            "detect s": ",".join(f"{x:.2f}" for x in r["detect_s"]) or "-",
            "emulated": "emulated" if r["emulated"] else "",
        }
        for name, r in report["scenarios"].items()
    }
    print()
    print_table(
        "scenario",
        rows,
        ["runs", "requests", "hit", "hit@fault", "hit lost", "detect s", "emulated"],
    )
    print()
    for key, target in TARGETS.items():
        value = report.get(key)
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        print(f"{key:28s} {shown:>12s}   target {target}")
    if report.get("quick"):
        print("(quick run: shorter soak and fewer fuzz cases; see 'config')")


TARGETS = {
    "lost_requests": "0",
    "hung_requests": "0",
    "requests_hit_by_faults": ">= 0.20",
    "dead_peer_detect_s_p95": "<= 5",
    "cancel_free_s_p95": "<= 1",
    "soak_rss_growth_mb_per_h": "<= 50",
    "fuzz_cases": ">= 100000",
    "fuzz_crashes": "0",
    "fuzz_unknown_status": "0",
    "unauthenticated_accepted": "0",
    "p99_latency_ratio_64": "reported",
}


def plot(report: dict[str, Any], path: Path) -> None:
    """Requests and hits per scenario; detection and cancel times against their bounds; the
    soak cloud's RSS over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    rows = report["scenarios"]
    names = list(rows)
    labels = [n + (" (emulated)" if rows[n]["emulated"] else "") for n in names]
    xs = range(len(names))
    axes[0].bar(xs, [rows[n]["requests"] for n in names], label="requests", color="#bbb")
    axes[0].bar(xs, [rows[n]["hit"] for n in names], label="hit by the fault", color="#c44")
    axes[0].set_xticks(list(xs), labels, rotation=35, ha="right", fontsize=7)
    axes[0].set_title(
        f"requests hit; lost {report['lost_requests']}, hung {report['hung_requests']}"
    )
    axes[0].legend(fontsize=8)
    det = report["detection_s"]
    series = [
        ("dead peer, edge (keepalive)", det["edge"]),
        ("dead peer, cloud (keepalive)", det["cloud"]),
        ("kill -9, edge", det["kill9_edge"]),
        ("cancel -> freed", [c for c in report["cancel_free_s"] if c is not None]),
    ]
    for i, (_name, values) in enumerate(series):
        axes[1].plot([i] * len(values), values, "o", alpha=0.7)
    axes[1].set_xticks(
        range(len(series)), [s[0] for s in series], rotation=20, ha="right", fontsize=7
    )
    axes[1].axhline(5, ls="--", color="gray", lw=1)
    axes[1].axhline(1, ls=":", color="gray", lw=1)
    axes[1].set_ylabel("seconds")
    axes[1].set_title("detection (bound 5 s; blackhole emulated) and cancel (1 s)", fontsize=9)
    soak = report["soak"]["long"]
    ts = [s[0] / 60 for s in soak["rss_samples"]]
    axes[2].plot(ts, [s[1] for s in soak["rss_samples"]])
    axes[2].set_xlabel("minutes")
    axes[2].set_ylabel("cloud RSS (MB)")
    axes[2].set_title(
        f"{soak['sessions']} sessions: {report['soak_rss_growth_mb_per_h']:.1f} MB/h, "
        f"p99 x{report['p99_latency_ratio_64']:.1f} of one session",
        fontsize=9,
    )
    fig.suptitle("tandem bench chaos" + (" (quick)" if report.get("quick") else ""))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
