"""What a link does to bytes: per-direction specs, partial changes and timed schedules.

Pure data, no I/O, so profiles, the CLI and the proxy share one definition. A *partial change*
is a mapping applied on top of the current spec:

- ``{"latency_ms": 40}``: a :class:`DirectionSpec` field name sets both directions;
- ``{"up_bandwidth_mbit": 2}`` / ``{"down_jitter_ms": 5}``: ``up_`` or ``down_`` sets one;
- ``{"uplink": {"blackhole": True}}``: a nested mapping patches one direction.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

DIRECTIONS = ("uplink", "downlink")
_PREFIXES = {"up": "uplink", "down": "downlink"}


def parse_hostport(text: str) -> tuple[str, int]:
    """``"host:port"`` -> ``(host, port)``, with a message naming the bad part."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class DirectionSpec:
    """How one direction of the link treats the bytes that cross it.

    Loss is modelled as connection resets, not dropped packets: TCP hides packet loss behind
    retransmission (it shows up as delay, which ``jitter_ms`` covers), so what an application
    really sees from a bad path is the connection dying (handover, RRC drop, NAT rebinding).
    """

    latency_ms: float = 0.0  # fixed one-way delay (propagation + processing); every chunk pays it
    jitter_ms: float = 0.0  # mean extra one-way delay, uniform on [0, 2*jitter]; never reorders
    bandwidth_mbit: float = 0.0  # payload rate in Mbit/s (1e6 bit/s); 0 = unlimited
    resets_per_s: float = 0.0  # Poisson rate (per second of connection life) of resets
    blackhole: bool = False  # deliver nothing; bytes are held (sender backpressured) until cleared

    def __post_init__(self) -> None:
        for name in ("latency_ms", "jitter_ms", "bandwidth_mbit", "resets_per_s"):
            value = getattr(self, name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not ok or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not isinstance(self.blackhole, bool):
            raise ValueError(f"blackhole must be true or false, got {self.blackhole!r}")

    @property
    def mean_delay_ms(self) -> float:
        """Mean one-way delay of a small message: fixed latency plus mean jitter."""
        return self.latency_ms + self.jitter_ms

    def serialization_ms(self, nbytes: int) -> float:
        """Time to push ``nbytes`` onto the link at its bandwidth (0 when unlimited)."""
        return nbytes * 8 / (self.bandwidth_mbit * 1e3) if self.bandwidth_mbit > 0 else 0.0


FIELD_NAMES = tuple(f.name for f in fields(DirectionSpec))


def _check_field(name: str, key: str) -> None:
    if name not in FIELD_NAMES:
        valid = ", ".join(FIELD_NAMES)
        raise ValueError(
            f"unknown link setting {key!r}; use one of {valid}, prefixed with up_ or down_ "
            "for one direction, or 'uplink'/'downlink' with a mapping"
        )


@dataclass(frozen=True)
class LinkSpec:
    """Both directions of an emulated link, seen from the client (the edge)."""

    uplink: DirectionSpec = field(default_factory=DirectionSpec)  # client -> upstream (edge->cloud)
    downlink: DirectionSpec = field(default_factory=DirectionSpec)  # upstream -> client

    @classmethod
    def symmetric(cls, **settings: Any) -> LinkSpec:
        """The same :class:`DirectionSpec` settings both ways."""
        one = DirectionSpec(**settings)
        return cls(one, one)

    def direction(self, name: str) -> DirectionSpec:
        """The spec of ``"uplink"`` or ``"downlink"``."""
        if name == "uplink":
            return self.uplink
        if name == "downlink":
            return self.downlink
        raise ValueError(f"unknown direction {name!r}; use one of {DIRECTIONS}")

    def changed(self, change: LinkSpec | Mapping[str, Any]) -> LinkSpec:
        """This spec with ``change`` applied: a LinkSpec replaces it, a mapping patches it."""
        if isinstance(change, LinkSpec):
            return change
        if not isinstance(change, Mapping):
            kind = type(change).__name__
            raise ValueError(f"a link change is a LinkSpec or a mapping, got {kind}")
        patch: dict[str, dict[str, Any]] = {"uplink": {}, "downlink": {}}
        for key, value in change.items():
            if key in DIRECTIONS:
                if isinstance(value, DirectionSpec):
                    value = asdict(value)
                if not isinstance(value, Mapping):
                    raise ValueError(f"{key!r} takes a mapping of settings, got {value!r}")
                for name, sub in value.items():
                    _check_field(name, f"{key}.{name}")
                    patch[key][name] = sub
                continue
            prefix, _, rest = key.partition("_")
            if prefix in _PREFIXES:
                _check_field(rest, key)
                patch[_PREFIXES[prefix]][rest] = value
            else:
                _check_field(key, key)
                patch["uplink"][key] = value
                patch["downlink"][key] = value
        return LinkSpec(
            replace(self.uplink, **patch["uplink"]), replace(self.downlink, **patch["downlink"])
        )

    @property
    def rtt_ms(self) -> float:
        """Mean round trip of a tiny message: both one-way delays with their mean jitter."""
        return self.uplink.mean_delay_ms + self.downlink.mean_delay_ms

    @property
    def blackholed(self) -> bool:
        """True when either direction delivers nothing."""
        return self.uplink.blackhole or self.downlink.blackhole

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain JSON-ready form; :meth:`from_dict` reads it back."""
        return {"uplink": asdict(self.uplink), "downlink": asdict(self.downlink)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LinkSpec:
        """Defaults (an ideal link) patched with ``data``, in any form :meth:`changed` takes."""
        return cls().changed(data)


Change = LinkSpec | Mapping[str, Any]


@dataclass(frozen=True)
class ScheduleStep:
    """One scripted change: ``at_s`` seconds after the schedule starts, apply ``change``."""

    at_s: float  # seconds after the schedule starts (when the proxy starts, or play() is called)
    change: Change  # a LinkSpec replaces the current spec; a mapping patches it


@dataclass(frozen=True, init=False)
class Schedule:
    """Changes applied to a running link at given times, in time order.

    Built from ``(at_seconds, LinkSpec-or-mapping)`` pairs or :class:`ScheduleStep` values.
    Every change is validated up front, so a bad schedule fails before the experiment runs.
    """

    steps: tuple[ScheduleStep, ...]  # sorted by at_s; equal times keep their given order

    def __init__(self, steps: Iterable[ScheduleStep | tuple[float, Change]] = ()) -> None:
        out: list[ScheduleStep] = []
        for step in steps:
            if not isinstance(step, ScheduleStep):
                at_s, change = step
                step = ScheduleStep(float(at_s), change)
            if not math.isfinite(step.at_s) or step.at_s < 0:
                raise ValueError(f"schedule time must be finite and >= 0, got {step.at_s!r}")
            LinkSpec().changed(step.change)  # raises on unknown keys or bad values
            out.append(step)
        object.__setattr__(self, "steps", tuple(sorted(out, key=lambda s: s.at_s)))

    @property
    def duration_s(self) -> float:
        """Time of the last change (0 for an empty schedule)."""
        return self.steps[-1].at_s if self.steps else 0.0

    @classmethod
    def parse(cls, data: Any, profile: Callable[[str], LinkSpec] | None = None) -> Schedule:
        """Read the JSON form: a list (or ``{"steps": [...]}``) of steps, each one of
        ``{"at_s": 2.0, "set": {...partial change...}}`` or ``{"at_s": 2.0, "profile": "lte"}``;
        ``profile`` resolves profile names (the CLI passes the profile table's lookup).
        """
        if isinstance(data, Mapping):
            data = data.get("steps")
        if not isinstance(data, list):
            raise ValueError("a schedule is a JSON list of steps, or an object with 'steps'")
        steps: list[ScheduleStep] = []
        for i, item in enumerate(data):
            if not isinstance(item, Mapping) or "at_s" not in item:
                raise ValueError(f"schedule step {i} must be an object with 'at_s'")
            extra = set(item) - {"at_s", "set", "profile"}
            if extra or ("set" in item) == ("profile" in item):
                raise ValueError(
                    f"schedule step {i} needs exactly one of 'set' or 'profile' "
                    f"besides 'at_s' (got keys {sorted(item)})"
                )
            if "profile" in item:
                if profile is None:
                    raise ValueError(f"schedule step {i} names a profile but none can be resolved")
                change: Change = profile(str(item["profile"]))
            else:
                change = dict(item["set"])
            steps.append(ScheduleStep(float(item["at_s"]), change))
        return cls(steps)

    @classmethod
    def load(cls, path: str | Path, profile: Callable[[str], LinkSpec] | None = None) -> Schedule:
        """:meth:`parse` a JSON file."""
        return cls.parse(json.loads(Path(path).read_text()), profile)
