"""The price table and device power: read from the device profile table, each with its source.

Cloud prices are the profiles' ``usd_per_hour`` (on-demand rental of every chip, cited there);
edge power is the profiles' ``power_w`` (drawn while the drafter computes, cited there). Nothing
is restated here: this module only selects and formats them.
"""

from __future__ import annotations

from typing import Any

from node_runtime.profiles import PROFILES, get_profile


def cloud_price(profile: str) -> float:
    """$ per hour of the cloud profile's hardware (every chip); 0 when the profile has none."""
    p = get_profile(profile)
    return p.usd_per_hour.value if p.usd_per_hour is not None else 0.0


def edge_power_w(profile: str) -> float:
    """Watts the edge profile's device draws while it computes."""
    return get_profile(profile).power_w.value


def price_table() -> list[dict[str, Any]]:
    """Every profile with its price (clouds) and power, and where each figure comes from."""
    rows = []
    for p in PROFILES.values():
        rows.append(
            {
                "profile": p.name,
                "role": p.role,
                "usd_per_hour": p.usd_per_hour.value if p.usd_per_hour else None,
                "usd_source": p.usd_per_hour.source if p.usd_per_hour else None,
                "power_w": p.power_w.value,
                "power_source": p.power_w.source,
            }
        )
    return rows


def describe_prices() -> str:
    """The price table as text."""
    lines = ["profile                          role   $/h     W      sources"]
    for row in price_table():
        usd = f"{row['usd_per_hour']:.2f}" if row["usd_per_hour"] is not None else "-"
        src = row["usd_source"] or row["power_source"]
        lines.append(f"{row['profile']:<32} {row['role']:<6} {usd:<7} {row['power_w']:<6g} {src}")
    return "\n".join(lines)
