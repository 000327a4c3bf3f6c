"""Hostile-input fuzzing of every gRPC service, the telemetry decoder and the OpenAI HTTP API.

Cases are random protobuf messages built from their descriptors (oversized fields included), the
bytes of valid messages mutated (bit flips, truncation, insertion), scripted Speculate streams
(out-of-order and replayed round ids, wrong base positions, verify after close, a client that
vanishes mid-stream), random and mutated telemetry frames, and malformed HTTP bodies.

Each outcome is classified: ``ok``, ``clean`` (a precise status with a message), ``unknown``
(UNKNOWN or INTERNAL: a finding) or ``crash`` (the server stopped answering, a session leaked, or
the harness saw an exception that is not a status: a finding).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import descriptor as d
from google.protobuf.message import Message

C = grpc.StatusCode
CLEAN: frozenset[grpc.StatusCode] = frozenset(
    {
        C.INVALID_ARGUMENT,
        C.NOT_FOUND,
        C.RESOURCE_EXHAUSTED,
        C.FAILED_PRECONDITION,
        C.UNAUTHENTICATED,
        C.PERMISSION_DENIED,
        C.OUT_OF_RANGE,
        C.ALREADY_EXISTS,
        C.CANCELLED,  # the client cancelled
        C.DEADLINE_EXCEEDED,  # the client's deadline
        C.UNAVAILABLE,  # a node the request needs (a peer, a cloud) is not there
    }
)
BAD: frozenset[grpc.StatusCode] = frozenset({C.UNKNOWN, C.INTERNAL})
_INTS = (0, 1, -1, 2, 7, 63, 64, 65, 255, 1000, 2**31 - 1, -(2**31), 2**32 - 1, 2**63 - 1, -(2**63))
_FLOATS = (0.0, -0.0, 1.0, -1.0, 0.5, 1e-9, 2.0, 1e308, -1e308, float("inf"), float("-inf"))
_NAN = float("nan")
_RANGES = {
    d.FieldDescriptor.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    d.FieldDescriptor.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    d.FieldDescriptor.CPPTYPE_UINT32: (0, 2**32 - 1),
    d.FieldDescriptor.CPPTYPE_UINT64: (0, 2**64 - 1),
}


@dataclass
class Tally:
    """Counts of outcomes over all surfaces, and every finding with its input."""

    cases: int = 0
    crashes: int = 0
    unknown_status: int = 0
    no_message: int = 0
    by_surface: dict[str, dict[str, int]] = field(default_factory=dict)
    findings: list[dict[str, Any]] = field(default_factory=list)

    def add(self, surface: str, outcome: str, detail: str = "", case: str = "") -> None:
        """Count one case of ``surface``; findings keep their detail and input (capped)."""
        self.cases += 1
        counts = self.by_surface.setdefault(surface, {})
        counts[outcome] = counts.get(outcome, 0) + 1
        counts["cases"] = counts.get("cases", 0) + 1
        if outcome == "clean" and detail:  # by status, e.g. INVALID_ARGUMENT
            counts[detail] = counts.get(detail, 0) + 1
        if outcome in ("crash", "unknown", "no_message"):
            if outcome == "crash":
                self.crashes += 1
            elif outcome == "unknown":
                self.unknown_status += 1
            else:
                self.no_message += 1
            if len(self.findings) < 500:
                self.findings.append(
                    {
                        "surface": surface,
                        "outcome": outcome,
                        "detail": detail[:500],
                        "input": case[:2000],
                    }
                )

    def as_json(self) -> dict[str, Any]:
        """The figures: fuzz_cases, fuzz_crashes, fuzz_unknown_status, per surface, findings."""
        return {
            "fuzz_cases": self.cases,
            "fuzz_crashes": self.crashes,
            "fuzz_unknown_status": self.unknown_status,
            "fuzz_no_message": self.no_message,
            "surfaces": self.by_surface,
            "findings": self.findings,
        }


def classify(err: BaseException | None) -> tuple[str, str]:
    """(outcome, detail) of one call's ending: None is ``ok``."""
    if err is None:
        return "ok", ""
    if isinstance(err, grpc.aio.AioRpcError):
        code, message = err.code(), err.details() or ""
        if code in BAD:
            return "unknown", f"{code.name}: {message}"
        if code not in CLEAN:
            return "crash", f"unexpected status {code.name}: {message}"
        if not message.strip():
            return "no_message", f"{code.name} without a message"
        return "clean", code.name
    return "crash", f"{type(err).__name__}: {err}"


def _scalar(f: d.FieldDescriptor, rng: random.Random, big: bool) -> Any:
    t = f.cpp_type
    if t == d.FieldDescriptor.CPPTYPE_BOOL:
        return rng.random() < 0.5
    if t == d.FieldDescriptor.CPPTYPE_ENUM:
        return rng.randint(-2, 12)
    if t in _RANGES:
        lo, hi = _RANGES[t]
        v = rng.choice(_INTS) if rng.random() < 0.6 else rng.randint(-5, 300)
        return min(max(v, lo), hi)
    if t in (d.FieldDescriptor.CPPTYPE_FLOAT, d.FieldDescriptor.CPPTYPE_DOUBLE):
        r = rng.random()
        if r < 0.1:
            return _NAN
        v = rng.choice(_FLOATS) if r < 0.6 else rng.uniform(-2, 2)
        if t == d.FieldDescriptor.CPPTYPE_FLOAT and abs(v) > 3e38 and v == v:
            v = float("inf") if v > 0 else float("-inf")
        return v
    n = rng.choice((0, 1, 3, 8, 40)) if not big else rng.choice((1000, 70_000))
    if t == d.FieldDescriptor.CPPTYPE_STRING and f.type == d.FieldDescriptor.TYPE_STRING:
        alphabet = "ab 1+*?Q=\x00\u00e9\u4e2d\U0001f600\n"
        return "".join(rng.choice(alphabet) for _ in range(min(n, 64))) * max(1, n // 64)
    return rng.randbytes(n)


def random_message(cls: type[Message], rng: random.Random, depth: int = 0) -> Message:
    """A random instance of ``cls``: any subset of fields, extreme and oversized values."""
    msg = cls()
    for f in cls.DESCRIPTOR.fields:
        if rng.random() < 0.45:
            continue
        big = rng.random() < 0.03
        sub = f.message_type
        if sub is not None and sub.GetOptions().map_entry:
            target = getattr(msg, f.name)
            kf, vf = sub.fields_by_name["key"], sub.fields_by_name["value"]
            for _ in range(rng.choice((1, 2, 5, 200 if big else 3))):
                key = _scalar(kf, rng, False)
                if vf.message_type is not None:
                    if depth < 3:
                        target[key].CopyFrom(
                            random_message(vf.message_type._concrete_class, rng, depth + 1)
                        )
                else:
                    target[key] = _scalar(vf, rng, False)
            continue
        repeated = f.is_repeated
        count = (
            (rng.choice((1, 2, 3, 9, 40)) if not big else rng.choice((500, 20_000)))
            if repeated
            else 1
        )
        if sub is not None:
            if depth >= 3:
                continue
            count = min(count, 50)
            items = [random_message(sub._concrete_class, rng, depth + 1) for _ in range(count)]
            if repeated:
                getattr(msg, f.name).extend(items)
            else:
                getattr(msg, f.name).CopyFrom(items[0])
        elif repeated:
            if count > 100:  # oversized: one repeated value (fast to build, as large on the wire)
                getattr(msg, f.name).extend([_scalar(f, rng, False)] * count)
            else:
                getattr(msg, f.name).extend(_scalar(f, rng, False) for _ in range(count))
        else:
            setattr(msg, f.name, _scalar(f, rng, big))
    return msg


def mutate(data: bytes, rng: random.Random) -> bytes:
    """``data`` with a few random edits: bit flips, truncation, insertion, a byte duplicated."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        if op == 0 and buf:
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            del buf[rng.randrange(len(buf)) :]
        elif op == 2:
            i = rng.randint(0, len(buf))
            buf[i:i] = rng.randbytes(rng.randint(1, 8))
        elif op == 3 and buf:
            i = rng.randrange(len(buf))
            buf[i] = rng.choice((0x00, 0x7F, 0x80, 0xFF))
        elif buf:
            i = rng.randrange(len(buf))
            buf[i:i] = buf[i : i + rng.randint(1, 16)]
    return bytes(buf)


def short(obj: Any) -> str:
    """A printable, capped form of a case's input for the findings."""
    if isinstance(obj, Message):
        return f"{type(obj).__name__}<{obj.ByteSize()} B> " + str(obj)[:1500].replace("\n", " ")
    if isinstance(obj, bytes | bytearray):
        return f"bytes<{len(obj)}> {bytes(obj[:600]).hex()}"
    return repr(obj)[:2000]


Recorder = Callable[[str, str, str, str], None]
