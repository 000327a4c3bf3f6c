"""The table ``tandem status`` prints: nodes, load, acceptance per pair, RTT per link."""

from __future__ import annotations

from tandem.client import NodeState


def render(nodes: list[NodeState]) -> str:
    """One row a node, then one row a link and a (drafter, target) pair."""
    rows = [("node", "role", "address", "model", "device", "load", "acceptance", "tokens")]
    links: list[tuple[str, str, str]] = []
    for n in sorted(nodes, key=lambda n: (n.role, n.node_id)):
        v = n.values
        acceptance = v.get("acceptance_rate")
        tokens = v.get("generated_tokens", 0.0) + (
            v.get("accepted_tokens", 0.0) if n.role == "cloud" else 0.0
        )
        rows.append(
            (
                n.node_id,
                n.role,
                n.address,
                ",".join(n.models) or "-",
                n.device or "-",
                "unreachable: " + n.error if n.error else f"{n.load:.0f}",
                f"{acceptance:.2f}" if acceptance else "-",
                f"{tokens:.0f}",
            )
        )
        links += [(n.node_id, peer, f"{ms:.1f} ms") for peer, ms in sorted(n.rtt_ms.items())]
        links += [(n.node_id, pair, f"acceptance {a:.2f}") for pair, a in n.acceptance.items()]
    out = _table(rows)
    if links:
        out += "\n\n" + _table([("node", "link / pair", "figure"), *links])
    return out


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
