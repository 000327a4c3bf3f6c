"""Telemetry samples and their wire form: a versioned msgpack map, decoded strictly and bounded.

Wire format: two frames, ``TOPIC`` and one msgpack map (``"v": 1``). Fields may be added to v1
(decoders ignore unknown keys); a change old decoders cannot read bumps ``"v"``. Decoding checks
the frame size first, then msgpack limits, then the schema; anything else is a
``TelemetryDecodeError`` that the subscriber counts and drops. Counts, rates, round trips and
extra fields named like durations (``*_ms``, ``*_ms_per_token``, ``*_s``) are never negative.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

import msgpack

TOPIC = b"tandem.telemetry.v1"
WIRE_VERSION = 1
ROLES = frozenset({"edge", "cloud"})
MAX_FRAME_BYTES = 64 * 1024  # a sample with hundreds of peers is a few KB; 64 KiB is generous
MAX_NAME_CHARS = 256  # node, peer, model and extra-field names
MAX_PAIRS = 256  # (drafter, target) pairs per sample
MAX_PEERS = 1024  # rtt_ms entries per sample
MAX_EXTRA = 256  # extra entries per sample
_MAX_INT = 2**63 - 1
_WIRE_KEYS = 16  # map entries the top level may hold, unknown future keys included
# Extra fields named like durations are costs the scheduler adds up: never negative.
DURATION_SUFFIXES = ("_ms", "_ms_per_token", "_s")

Pair = tuple[str, str]  # (drafter model, target model)


class TelemetryDecodeError(ValueError):
    """A frame that is not a valid sample; ``reason`` is a short category for counters."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


@dataclass(frozen=True)
class AcceptanceStats:
    """Speculation counters for one (drafter, target) pair, cumulative since the publisher began.

    Cumulative rather than per interval: a lost sample loses nothing, the next one has it all.
    """

    drafted: int = 0  # draft tokens sent for verification
    accepted: int = 0  # of those, accepted by the target (<= drafted)
    rounds: int = 0  # verify rounds
    full_rounds: int = 0  # rounds in which every drafted token was accepted (<= rounds)

    @property
    def acceptance_rate(self) -> float:
        """Accepted draft tokens / drafted tokens (0 when nothing was drafted)."""
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """1 + accepted / rounds, counting the bonus token (0 when no round ran)."""
        return 1.0 + self.accepted / self.rounds if self.rounds else 0.0

    def __add__(self, other: AcceptanceStats) -> AcceptanceStats:
        return AcceptanceStats(
            self.drafted + other.drafted,
            self.accepted + other.accepted,
            self.rounds + other.rounds,
            self.full_rounds + other.full_rounds,
        )


@dataclass(frozen=True)
class Reading:
    """What a node measured; a publisher's ``sample_fn`` returns one. The maps are read-only."""

    active_sessions: int = 0
    queue_depth: int = 0  # requests waiting, not yet being served
    busy_fraction: float = 0.0  # share of recent wall time spent computing, in [0, 1]
    tokens_per_s: float = 0.0
    acceptance: Mapping[Pair, AcceptanceStats] = field(default_factory=dict)
    rtt_ms: Mapping[str, float] = field(default_factory=dict)  # peer node id -> round trip, ms
    extra: Mapping[str, float] = field(default_factory=dict)  # open: anything numeric, named


@dataclass(frozen=True)
class Sample:
    """One telemetry message: who sent it, in which sequence and when, and the reading."""

    node_id: str
    role: str  # one of ROLES
    epoch: str  # random per publisher start: seq restarts with a new epoch, which is no gap
    seq: int  # per publisher and epoch, increasing by one per sample sent
    ts: float  # wall clock at send, for humans and cross-host logs
    mono: float  # the publisher's monotonic clock at send, comparable on its host only
    reading: Reading = field(default_factory=Reading)


def _fail(reason: str, message: str) -> NoReturn:
    raise TelemetryDecodeError(reason, message)


def _name(value: Any, where: str) -> str:
    if type(value) is not str or not 0 < len(value) <= MAX_NAME_CHARS:
        _fail("schema", f"{where}: a string of 1..{MAX_NAME_CHARS} characters")
    return value


def _count(value: Any, where: str) -> int:
    if type(value) is not int or not 0 <= value <= _MAX_INT:  # type(): a bool is no count
        _fail("schema", f"{where}: an integer in [0, 2**63)")
    return value


def _real(value: Any, where: str, lo: float = 0.0, hi: float = math.inf) -> float:
    if type(value) not in (int, float) or not lo <= value <= hi or not math.isfinite(value):
        _fail("schema", f"{where}: a finite number in [{lo}, {hi}]")
    return float(value)


def _map(value: Any, where: str, limit: int) -> dict[str, Any]:
    if type(value) is not dict or len(value) > limit:
        _fail("schema", f"{where}: a map of at most {limit} entries")
    return value


def is_duration(name: str) -> bool:
    """Whether an extra field is a duration (a cost), which must be >= 0."""
    return name.endswith(DURATION_SUFFIXES)


def _extra(name: str, value: Any) -> float:
    return _real(value, f"extra[{name}]", 0.0 if is_duration(name) else -math.inf)


def _acceptance(value: Any) -> dict[Pair, AcceptanceStats]:
    if type(value) is not list or len(value) > MAX_PAIRS:
        _fail("schema", f"acceptance: a list of at most {MAX_PAIRS} entries")
    out: dict[Pair, AcceptanceStats] = {}
    for i, row in enumerate(value):
        where = f"acceptance[{i}]"
        if type(row) is not list or len(row) != 6:
            _fail("schema", f"{where}: [drafter, target, drafted, accepted, rounds, full_rounds]")
        pair = (_name(row[0], f"{where}.drafter"), _name(row[1], f"{where}.target"))
        stats = AcceptanceStats(*(_count(n, f"{where}[{j + 2}]") for j, n in enumerate(row[2:])))
        if stats.accepted > stats.drafted or stats.full_rounds > stats.rounds:
            _fail("schema", f"{where}: accepted <= drafted and full_rounds <= rounds")
        if pair in out:
            _fail("schema", f"{where}: pair {pair} listed twice")
        out[pair] = stats
    return out


def _from_wire(obj: Any) -> Sample:
    top = _map(obj, "sample", _WIRE_KEYS)
    version = top.get("v")
    if type(version) is not int or version != WIRE_VERSION:
        _fail("version", f"v: expected {WIRE_VERSION}, got {version!r}")
    role = _name(top.get("role"), "role")
    if role not in ROLES:
        _fail("schema", f"role: one of {sorted(ROLES)}, got {role!r}")
    rtt = _map(top.get("rtt_ms", {}), "rtt_ms", MAX_PEERS)
    extra = _map(top.get("extra", {}), "extra", MAX_EXTRA)
    reading = Reading(
        active_sessions=_count(top.get("active_sessions", 0), "active_sessions"),
        queue_depth=_count(top.get("queue_depth", 0), "queue_depth"),
        busy_fraction=_real(top.get("busy_fraction", 0.0), "busy_fraction", hi=1.0),
        tokens_per_s=_real(top.get("tokens_per_s", 0.0), "tokens_per_s"),
        acceptance=_acceptance(top.get("acceptance", [])),
        rtt_ms={_name(k, "rtt_ms key"): _real(v, f"rtt_ms[{k}]") for k, v in rtt.items()},
        extra={_name(k, "extra key"): _extra(k, v) for k, v in extra.items()},
    )
    return Sample(
        node_id=_name(top.get("node_id"), "node_id"),
        role=role,
        epoch=_name(top.get("epoch"), "epoch"),
        seq=_count(top.get("seq"), "seq"),
        ts=_real(top.get("ts"), "ts"),
        mono=_real(top.get("mono"), "mono", -math.inf),
        reading=reading,
    )


def _to_wire(sample: Sample) -> dict[str, Any]:
    r = sample.reading
    acceptance = [
        [drafter, target, s.drafted, s.accepted, s.rounds, s.full_rounds]
        for (drafter, target), s in r.acceptance.items()
    ]
    return {
        "v": WIRE_VERSION,
        "node_id": sample.node_id,
        "role": sample.role,
        "epoch": sample.epoch,
        "seq": sample.seq,
        "ts": sample.ts,
        "mono": sample.mono,
        "active_sessions": r.active_sessions,
        "queue_depth": r.queue_depth,
        "busy_fraction": r.busy_fraction,
        "tokens_per_s": r.tokens_per_s,
        "acceptance": acceptance,
        "rtt_ms": dict(r.rtt_ms),
        "extra": dict(r.extra),
    }


def decode_sample(frame: bytes, max_frame_bytes: int = MAX_FRAME_BYTES) -> Sample:
    """Decode and validate one payload frame; raises ``TelemetryDecodeError``."""
    if len(frame) > max_frame_bytes:
        _fail("oversized", f"{len(frame)} bytes > {max_frame_bytes}")
    try:
        obj = msgpack.unpackb(
            frame,
            raw=False,
            strict_map_key=True,
            max_str_len=max_frame_bytes,
            max_bin_len=0,  # the schema has no bytes anywhere
            max_ext_len=0,
            max_array_len=MAX_PAIRS,
            max_map_len=max(MAX_PEERS, _WIRE_KEYS),
        )
    except Exception as err:  # msgpack raises a zoo of types; all mean "not a sample"
        raise TelemetryDecodeError("msgpack", f"{type(err).__name__}: {err}") from None
    return _from_wire(obj)


def encode_sample(sample: Sample, max_frame_bytes: int = MAX_FRAME_BYTES) -> bytes:
    """Encode ``sample``; raises ``ValueError`` for what a subscriber would reject, so a
    publisher never sends what no one can read."""
    wire = _to_wire(sample)
    _from_wire(wire)  # the decoder's own checks, on the sending side
    payload: bytes = msgpack.packb(wire, use_bin_type=True)
    if len(payload) > max_frame_bytes:
        raise ValueError(f"sample is {len(payload)} bytes > {max_frame_bytes}")
    return payload
