"""What one simulated fleet is: a frozen config, built from TOML tables or the command line.

Every cost comes from the device profile table (``node_runtime.profiles``) and every link from
the link profiles (``simulations.link.profiles``): the config only names them.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from node_runtime.profiles import get_profile
from simulations.link.profiles import get_profile as get_link


class SimMode(str, enum.Enum):
    """How a simulated request runs. The value is the name used in configs, tables and JSON."""

    CLOUD_ONLY = "cloud-only"  # the target decodes every token, continuously batched
    EDGE_ONLY = "edge-only"  # the drafter alone
    SPECULATION = "speculation"  # token speculation, plain: draft k, verify, repeat
    PIPELINED = "pipelined"  # token speculation, the next round drafted while one is in flight
    STEP = "step"  # step speculation: the edge drafts a step, the cloud scores or rewrites it
    PRM = "prm-search"  # the edge drafts candidates per step, the cloud's PRM scores them
    ADAPTIVE = "adaptive"  # the coordinator's planner (coordinator.costmodel.plan) picks


class ArrivalKind(str, enum.Enum):
    """How requests arrive at the devices."""

    POISSON = "poisson"  # each device independently, exponential gaps
    MMPP = "mmpp"  # two-state Markov-modulated Poisson: bursts at burst_factor x the rate
    TRACE = "trace"  # replayed from a CSV file (time_s, device, prompt_tokens, new_tokens)


@dataclass(frozen=True)
class Arrivals:
    """The arrival process of requests."""

    kind: ArrivalKind = ArrivalKind.POISSON  # which process
    rate_per_device: float = 1 / 60  # mean requests per device per second (poisson, mmpp)
    burst_factor: float = 5.0  # mmpp: rate multiplier while bursting
    mean_calm_s: float = 60.0  # mmpp: mean time between bursts
    mean_burst_s: float = 10.0  # mmpp: mean burst length
    trace: str = ""  # trace: CSV path


@dataclass(frozen=True)
class FleetConfig:
    """N edge devices, M cloud nodes and a coordinator, simulated for ``duration_s``."""

    devices: int = 8  # edge devices
    clouds: int = 1  # cloud nodes
    edge_profile: str = "rpi5/smollm2-135m-q8"  # device profile of every edge
    cloud_profile: str = "a100x4/llama3-70b-bf16"  # device profile of every cloud
    link: str = "wifi"  # link profile between every edge and the clouds
    link_resets: bool = True  # the profile's connection resets (its loss) break sessions
    rtt_ms: float = -1.0  # >= 0: the link's latency set so its mean RTT is this (sweeps)
    mode: SimMode = SimMode.SPECULATION  # how requests run
    k: int = 4  # drafts per round (speculation)
    alpha: float | None = 0.8  # per-token acceptance; None: use ``survival``
    survival: tuple[float, ...] = ()  # measured per-position survival (positions 1..len)
    guess_right: float | None = None  # pipelined: P(bonus token guessed); None: the acceptance
    prompt_tokens: int = 64  # prompt length
    new_tokens: int = 64  # tokens each request generates
    max_new: int = 0  # drafting stops this far (0: new_tokens); a trace may stop requests early
    duration_s: float = 60.0  # arrivals stop here; requests in flight finish
    seed: int = 0  # every random draw derives from it
    arrivals: Arrivals = field(default_factory=Arrivals)  # the arrival process
    max_batch: int = 32  # verify rounds in one cloud pass at the most
    generate_batch: int = 32  # generations in one cloud pass at the most
    step_tokens: int = 16  # step modes: tokens per reasoning step
    step_acceptance: float = 0.8  # step speculation: share of drafted steps the cloud keeps
    prm_candidates: int = 4  # PRM search: candidates the edge drafts per step
    message_overhead_ms: float = 0.0  # software time per message each way (calibrated)
    connect_rtts: float = 2.0  # round trips a device's first call to a cloud pays (TCP + TLS 1.3)
    call_overhead_ms: float = 0.0  # host time added to every cloud pass (calibrated)
    edge_call_overhead_ms: float = 0.0  # host time added to every edge drafter call (calibrated)
    heartbeat_s: float = 1.0  # how often the coordinator's snapshot of cloud load refreshes
    fail_cloud_at_s: float = -1.0  # when cloud 0 is lost (< 0: never)
    drain_s: float = 300.0  # after duration_s, how long requests in flight may still finish

    def __post_init__(self) -> None:
        if self.devices < 1 or self.clouds < 0:
            raise ValueError(f"devices {self.devices} >= 1 and clouds {self.clouds} >= 0")
        if self.k < 1:
            raise ValueError(f"k: must be >= 1, got {self.k}")
        if self.new_tokens < 1 or self.prompt_tokens < 1:
            raise ValueError("new_tokens and prompt_tokens: must be >= 1")
        if self.alpha is None and not self.survival:
            raise ValueError("acceptance: give alpha or a measured survival")
        if self.alpha is not None and not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha: must lie in [0, 1], got {self.alpha}")
        if self.clouds == 0 and self.mode is not SimMode.EDGE_ONLY:
            raise ValueError(f"mode {self.mode.value}: needs at least one cloud")
        get_profile(self.edge_profile)  # unknown names fail here, listing the known ones
        get_profile(self.cloud_profile)
        get_link(self.link)

    @property
    def draft_cap(self) -> int:
        """Tokens a request may draft up to (the live edge's ``max_new``)."""
        return self.max_new or self.new_tokens


_ENUMS = {"mode": SimMode}
_TUPLES = {"survival"}


def _coerce(name: str, value: Any) -> Any:
    if name in _ENUMS:
        return _ENUMS[name](value)
    if name in _TUPLES:
        return tuple(float(v) for v in value)
    if name == "alpha" and isinstance(value, str) and value.lower() in ("", "none", "measured"):
        return None
    if name == "arrivals":
        return arrivals_from(value)
    return value


def arrivals_from(table: Mapping[str, Any] | Arrivals) -> Arrivals:
    """An ``Arrivals`` from a TOML table; unknown keys fail naming the field."""
    if isinstance(table, Arrivals):
        return table
    known = {f.name for f in fields(Arrivals)}
    bad = set(table) - known
    if bad:
        raise ValueError(f"arrivals: unknown keys {sorted(bad)}; known: {sorted(known)}")
    out = dict(table)
    if "kind" in out:
        out["kind"] = ArrivalKind(out["kind"])
    return Arrivals(**out)


def config_from(table: Mapping[str, Any], base: FleetConfig | None = None) -> FleetConfig:
    """``base`` (defaults when None) with the fields ``table`` sets; unknown keys fail."""
    known = {f.name for f in fields(FleetConfig)}
    bad = set(table) - known
    if bad:
        raise ValueError(f"fleet config: unknown keys {sorted(bad)}; known: {sorted(known)}")
    changes = {k: _coerce(k, v) for k, v in table.items()}
    return replace(base or FleetConfig(), **changes)


def as_table(cfg: FleetConfig) -> dict[str, Any]:
    """The config as plain JSON values."""
    out: dict[str, Any] = {}
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, enum.Enum):
            v = v.value
        elif isinstance(v, Arrivals):
            v = {g.name: getattr(v, g.name) for g in fields(v)}
            v["kind"] = v["kind"].value
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out
