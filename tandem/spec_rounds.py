"""Per-round speculation data, recorded at the wire, and the acceptance figures made from it.

The edge's request account sums rounds up; per-position survival needs each round. A stub that
wraps the cloud stub records every verify request the edge sends and the verdict that answers it,
so the benchmark reads exactly the drafts the cloud judged, whatever the edge does between rounds.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from models.metrics import (
    acceptance_rate,
    expected_tokens_per_round,
    mean_accepted_length,
    per_token_acceptance,
    position_survival,
    theory_survival,
)
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc


@dataclass(frozen=True)
class RoundRecord:
    """One verify round as the acceptance figures count it."""

    positions: int  # draft positions up to and including the first stop token
    accepted: int  # of those positions, the ones the verifier kept
    final: bool  # the last round of its request (the reply ended, or the token cap)


def clip_at_stop(draft: Sequence[int], accepted: int, stops: Collection[int]) -> tuple[int, int]:
    """(positions, accepted) of a draft counting only positions up to its first stop token:
    nothing drafted after a stop belongs to the reply, so it is neither drafted nor accepted."""
    end = next((i + 1 for i, t in enumerate(draft) if t in stops), len(draft))
    return end, min(max(accepted, 0), end)


def records(
    rounds: Sequence[tuple[Sequence[int], int]], stops: Collection[int]
) -> list[RoundRecord]:
    """One request's rounds, (draft, accepted) in order, as records; the last one is final."""
    out = []
    for i, (draft, accepted) in enumerate(rounds):
        positions, kept = clip_at_stop(draft, accepted, stops)
        out.append(RoundRecord(positions, kept, i == len(rounds) - 1))
    return out


def unclipped(rounds: Sequence[RoundRecord], k: int) -> list[RoundRecord]:
    """The rounds theory describes: not their request's last and drafting all k positions (a
    stop in the draft or the token cap cuts a round short, and ends or nears the request)."""
    return [r for r in rounds if not r.final and r.positions == k]


def acceptance_figures(rounds: Sequence[RoundRecord], k: int) -> dict[str, Any]:
    """Acceptance of ``rounds`` at draft length ``k``, measured and as theory predicts it.

    Theory takes the per-token acceptance a measured on these rounds (the geometric MLE) and
    predicts 1 + a + ... + a^k tokens a round and survival a^i at position i.
    """
    drafted = sum(r.positions for r in rounds)
    accepted = sum(r.accepted for r in rounds)
    full = sum(int(r.accepted == r.positions) for r in rounds)
    a = per_token_acceptance(accepted, len(rounds), full)
    return {
        "rounds": len(rounds),
        "acceptance_rate": acceptance_rate(accepted, drafted),
        "per_token_acceptance": a,
        "mean_accepted_length": mean_accepted_length(accepted, len(rounds)),
        "theory_accepted_length": expected_tokens_per_round(a, k) if a is not None else None,
        "survival": position_survival([(r.positions, r.accepted) for r in rounds], k),
        "theory_survival": theory_survival(a, k) if a is not None else None,
    }


class RecordingCall:
    """A Speculate stream call that notes each verify request's draft and its verdict."""

    def __init__(self, call: grpc.aio.StreamStreamCall, sink: list[tuple[list[int], int]]) -> None:
        self._call = call
        self._sink = sink
        self._sent: dict[tuple[str, int], list[int]] = {}

    async def write(self, msg: pb.SpecRequest) -> None:
        """Send ``msg``; a verify request's draft is kept until its verdict comes back."""
        if msg.HasField("verify"):
            v = msg.verify
            self._sent[(v.session_id, v.round_id)] = list(v.draft)
        await self._call.write(msg)

    async def read(self) -> Any:
        """The next reply; a verdict is recorded with the draft it judged."""
        reply = await self._call.read()
        if reply is not grpc.aio.EOF and reply.HasField("verdict"):
            v = reply.verdict
            draft = self._sent.pop((v.session_id, v.round_id), None)
            if draft is not None:
                self._sink.append((draft, int(v.accepted)))
        return reply

    def __getattr__(self, name: str) -> Any:  # done_writing, cancel, code, ...
        return getattr(self._call, name)


class RecordingStub:
    """A Cloud stub whose Speculate streams record their rounds into ``sink``."""

    def __init__(self, stub: pb_grpc.CloudStub, sink: list[tuple[list[int], int]]) -> None:
        self._stub = stub
        self.sink = sink

    def Speculate(self, *args: Any, **kwargs: Any) -> RecordingCall:  # noqa: N802 (gRPC name)
        """The wrapped stub's stream, recording."""
        return RecordingCall(self._stub.Speculate(*args, **kwargs), self.sink)

    def __getattr__(self, name: str) -> Any:  # Generate, Metrics, ...
        return getattr(self._stub, name)
