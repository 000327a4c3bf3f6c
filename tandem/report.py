"""Tables on the terminal and plots on disk, shared by the demo and the benchmarks."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def write_json(path: str | Path, report: Mapping[str, Any]) -> None:
    """Write ``report`` to ``path`` as JSON (its folder made) and say so; nothing when ``path``
    is empty."""
    if not path:
        return
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {out}")


def _fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)


def print_table(key: str, rows: Mapping[str, Mapping[str, object]], columns: Sequence[str]) -> None:
    """A fixed-width table: one row per key, one column per name."""
    header = [key, *columns]
    body = [[name, *(_fmt(r.get(c)) for c in columns)] for name, r in rows.items()]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=True)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    print(line)
    print("-" * len(line))
    for row in body:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)))


def bar_plot(
    rows: Mapping[str, Mapping[str, float | None]],
    metrics: Sequence[str],
    path: Path,
    title: str = "",
) -> None:
    """One bar panel per metric, one bar per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.4))
    axes = [axes] if len(metrics) == 1 else list(axes)
    names = list(rows)
    for ax, m in zip(axes, metrics, strict=True):
        vals = [rows[n].get(m) or 0.0 for n in names]
        ax.bar(names, vals, color=["#4C72B0", "#DD8452", "#55A868", "#C44E52"][: len(names)])
        ax.set_title(m.replace("_", " "))
        ax.tick_params(axis="x", rotation=20)
        for i, v in enumerate(vals):
            ax.annotate(f"{v:.3g}", (i, v), ha="center", va="bottom", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# Columns of a figures table: one repeated figure a row (see ``figure_row``).
FIGURE_COLUMNS = ("median", "spread", "n", "target", "met", "note")


def spread_text(spread: Mapping[str, float] | None) -> str:
    """``min-max`` of a spread in its JSON form (``tandem.repeats.Spread.as_dict``)."""
    if spread is None:
        return "-"
    return f"{_fmt(float(spread['min']))}-{_fmt(float(spread['max']))}"


def figure_row(
    spread: Mapping[str, float] | None,
    target: str = "",
    met: bool | None = None,
    note: str = "",
) -> dict[str, object]:
    """One row of a figures table: median, range and repeat count, target, whether the median
    meets it, and a note."""
    return {
        "median": None if spread is None else float(spread["median"]),
        "spread": spread_text(spread),
        "n": None if spread is None else int(spread["n"]),
        "target": target or "-",
        "met": met if target else None,
        "note": note,
    }


def median_and_error(
    spreads: Sequence[Mapping[str, float] | None],
) -> tuple[list[float], list[list[float]]]:
    """Medians and [below, above] error bar lengths (to min and max) for matplotlib's errorbar."""
    nan = float("nan")
    med = [float(s["median"]) if s else nan for s in spreads]
    lo = [m - float(s["min"]) if s else 0.0 for m, s in zip(med, spreads, strict=True)]
    hi = [float(s["max"]) - m if s else 0.0 for m, s in zip(med, spreads, strict=True)]
    return med, [lo, hi]
