"""Named links with typical figures, each citing where its numbers come from.

Every profile models the whole path from an edge device to the cloud node that serves it, not
just the radio hop. Figures are *typical* values (medians of public reports, rounded), not
guarantees or worst cases; for a worst case script a :class:`~simulations.link.spec.Schedule`.
Conventions (see :class:`~simulations.link.spec.DirectionSpec`): latency is the one-way floor,
jitter the mean extra one-way delay, bandwidth payload goodput, loss a reset rate per second.
Cellular uplinks get a few ms more latency than downlinks: an LTE/NR device must send a
scheduling request and wait for a grant before it may transmit (3GPP TS 36.321 / TS 38.321).
"""

from __future__ import annotations

from dataclasses import dataclass

from simulations.link.spec import DirectionSpec, LinkSpec


@dataclass(frozen=True)
class Profile:
    """A named link, what path it stands for, and the public sources of its figures."""

    name: str  # lookup key, as typed on the command line
    description: str  # which path this models
    spec: LinkSpec  # per-direction latency / jitter / bandwidth / reset figures
    source: str  # where the figures come from (typical values, rounded)


class UnknownProfileError(LookupError):
    """Raised by :func:`get_profile` for a name not in :data:`PROFILES`; lists the known ones."""


def _link(up: DirectionSpec, down: DirectionSpec) -> LinkSpec:
    return LinkSpec(uplink=up, downlink=down)


_D = DirectionSpec

_ALL = [
    Profile(
        "loopback",
        "no emulation: the kernel's loopback, the ideal-network baseline",
        LinkSpec(),
        "nothing is added; what is measured is the proxy's own overhead (well under 1 ms)",
    ),
    Profile(
        "lan",
        "wired gigabit Ethernet to an on-premises server, one switch",
        _link(_D(0.25, 0.05, 940.0), _D(0.25, 0.05, 940.0)),
        "IEEE 802.3ab 1000BASE-T line rate 1000 Mbit/s, ~940 Mbit/s TCP goodput after "
        "Ethernet/IP/TCP headers; switched-LAN ping RTT is typically 0.2-0.5 ms",
    ),
    Profile(
        "wifi",
        "Wi-Fi 5/6 to a home or office broadband line, then to a nearby cloud region",
        _link(_D(7.0, 2.0, 40.0), _D(7.0, 2.0, 90.0)),
        "Ookla Speedtest Global Index, fixed broadband medians 2024 (~90 Mbit/s down, ~40 "
        "Mbit/s up, ~10-15 ms idle latency); the Wi-Fi hop adds a few ms and most of the "
        "jitter (Sui et al., 'Characterizing and Improving WiFi Latency in Large-Scale "
        "Operational Networks', MobiSys 2016)",
    ),
    Profile(
        "5g",
        "5G NR mid-band (non-standalone) phone/modem to a cloud region",
        _link(_D(16.0, 4.0, 20.0, resets_per_s=0.0003), _D(12.0, 4.0, 150.0, resets_per_s=0.0003)),
        "Opensignal and Ookla 5G reports 2023-24 (mid-band medians ~100-250 Mbit/s down, "
        "~15-30 Mbit/s up, RTT ~25-40 ms to internet servers); Narayanan et al., 'A First Look "
        "at Commercial 5G Performance on Smartphones', WWW 2020; 3GPP TR 38.913 targets 4 ms "
        "radio user-plane latency, so most of the RTT is the core and internet path; resets as "
        "for lte (an assumption)",
    ),
    Profile(
        "lte",
        "4G LTE phone/modem with decent signal to a cloud region",
        _link(_D(27.0, 5.0, 8.0, resets_per_s=0.0003), _D(20.0, 5.0, 30.0, resets_per_s=0.0003)),
        "Opensignal 'Mobile Network Experience' reports (4G download ~20-40 Mbit/s, upload "
        "~5-10 Mbit/s, latency ~40-60 ms RTT); Huang et al., 'An In-depth Study of LTE', "
        "SIGCOMM 2013; resets (~1 per 30 min: handover or RRC drop) are an assumption",
    ),
    Profile(
        "congested-lte",
        "4G LTE in a busy cell at peak hour: bufferbloat and low share",
        _link(_D(45.0, 40.0, 1.0, resets_per_s=0.003), _D(35.0, 30.0, 4.0, resets_per_s=0.003)),
        "Jiang et al., 'Tackling Bufferbloat in 3G/4G Networks', IMC 2012 (RTT inflates to "
        "hundreds of ms, even seconds, under load); Opensignal busy-hour analyses (speeds drop "
        "sharply at peak); resets ~1 per 3 min are an assumption for a flaky cell",
    ),
    Profile(
        "satellite",
        "LEO satellite (Starlink residential) to a cloud region",
        _link(_D(22.0, 8.0, 12.0, resets_per_s=0.001), _D(20.0, 8.0, 100.0, resets_per_s=0.001)),
        "Starlink published specifications (25-60 ms latency, 25-220 Mbit/s down, 5-20 Mbit/s "
        "up); Michel et al., 'A First Look at Starlink Performance', IMC 2022; Ookla Starlink "
        "reports 2023-24 (median ~40-60 ms, ~100 Mbit/s down); satellite reassignment every "
        "15 s causes the jitter and rare drops (Tanveer et al., 2023)",
    ),
    Profile(
        "satellite-geo",
        "GEO satellite broadband (one bent-pipe hop at 35,786 km)",
        _link(_D(300.0, 15.0, 3.0, resets_per_s=0.001), _D(300.0, 15.0, 25.0, resets_per_s=0.001)),
        "physics: ground-satellite-ground is >= 239 ms one way; ITU-T G.114 planning value "
        "~260 ms per GEO hop; FCC Measuring Broadband America reports ~600 ms RTT for GEO "
        "satellite ISPs; plan speeds ~25 Mbit/s down, ~3 Mbit/s up",
    ),
]

PROFILES: dict[str, Profile] = {p.name: p for p in _ALL}


def get_profile(name: str) -> Profile:
    """The profile called ``name``; :class:`UnknownProfileError` lists the known names."""
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(PROFILES)
        raise UnknownProfileError(f"unknown link profile {name!r}; known: {known}") from None


def profile_spec(name: str) -> LinkSpec:
    """The :class:`LinkSpec` of profile ``name`` (a resolver for :meth:`Schedule.parse`)."""
    return get_profile(name).spec
