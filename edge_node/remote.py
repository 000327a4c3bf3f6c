"""The edge's clients for step work on other nodes: domain values in, wire messages on the way.

Searches run on worker threads with blocking stubs (``RemoteScorer``, ``PeerProposer``); step
speculation runs on the event loop (``CloudSteps``). Blocking channels are shared per address
by every search (``SyncChannels``) and closed with the node, never opened per request.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from edge_node.clouds import RECONNECT_OPTIONS
from edge_node.reason_types import ReasonAccount
from models.reasoning.proposer import StepDraft
from models.reasoning.protocols import Item
from node_runtime.serving import sync_channel
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc


def draft_from_wire(d: pb.StepDraftMsg) -> StepDraft:
    """A step draft from its message."""
    return StepDraft(d.text, d.tokens, d.complete, d.ended)


def draft_to_wire(d: StepDraft) -> pb.StepDraftMsg:
    """A step draft as its message."""
    return pb.StepDraftMsg(text=d.text, tokens=d.tokens, complete=d.complete, ended=d.ended)


class Traffic:
    """What crossed the network for one search; its calls run on several threads at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sent = 0
        self.received = 0

    def add(self, sent: int, received: int) -> None:
        """Count one call's request and reply bytes."""
        with self._lock:
            self.sent += sent
            self.received += received


class SyncChannels:
    """Blocking channels, one per address, shared by every search; at most ``size`` kept."""

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._channels: OrderedDict[str, grpc.Channel] = OrderedDict()

    def get(self, address: str) -> grpc.Channel:
        """The channel to ``address``, opened on first use."""
        with self._lock:
            ch = self._channels.get(address)
            if ch is None:
                ch = sync_channel(address, options=RECONNECT_OPTIONS)
                self._channels[address] = ch
                while len(self._channels) > self.size:  # an address not used for longest
                    self._channels.popitem(last=False)[1].close()
            self._channels.move_to_end(address)
            return ch

    def __len__(self) -> int:
        return len(self._channels)

    def close(self) -> None:
        """Close every channel (calls still on them fail with CANCELLED)."""
        with self._lock:
            for ch in self._channels.values():
                ch.close()
            self._channels.clear()


class RemoteScorer:
    """A StepScorer whose passes run on a cloud node (blocking calls, for a worker thread)."""

    def __init__(
        self, channel: grpc.Channel, traffic: Traffic, scorer: str = "", timeout_s: float = 30.0
    ) -> None:
        self.stub = pb_grpc.CloudStub(channel)
        self.traffic, self.scorer, self.timeout_s = traffic, scorer, timeout_s

    def score(self, question: str, steps: Sequence[str]) -> list[float]:
        """One score per step of one partial solution."""
        return self.score_batch([(question, steps)])[0]

    def score_batch(self, items: Sequence[Item]) -> list[list[float]]:
        """Scores of several partial solutions in one call."""
        req = pb.ScoreRequest(
            items=[pb.PartialSolution(question=q, steps=list(s)) for q, s in items],
            scorer=self.scorer,
        )
        reply = self.stub.ScoreSteps(req, timeout=self.timeout_s)
        self.traffic.add(req.ByteSize(), reply.ByteSize())
        return [list(s.scores) for s in reply.items]


class PeerProposer:
    """Proposals drafted by another edge node (blocking calls, for a worker thread)."""

    def __init__(
        self, channel: grpc.Channel, traffic: Traffic, delimiter: str, timeout_s: float = 30.0
    ) -> None:
        self.stub = pb_grpc.EdgeStub(channel)
        self.traffic, self.delimiter, self.timeout_s = traffic, delimiter, timeout_s

    def propose(
        self,
        question: str,
        prefixes: Sequence[Sequence[str]],
        n: int,
        temperature: float,
        seed: int,
        max_tokens: int | None = None,
    ) -> list[list[StepDraft]]:
        """``n`` candidates per prefix from the peer's drafter."""
        req = pb.ProposeRequest(
            question=question,
            prefixes=[pb.PartialSolution(steps=list(p)) for p in prefixes],
            n=n,
            temperature=temperature,
            seed=seed,
            max_tokens=max_tokens or 0,
            delimiter=self.delimiter,
        )
        reply = self.stub.ProposeSteps(req, timeout=self.timeout_s)
        self.traffic.add(req.ByteSize(), reply.ByteSize())
        if len(reply.per_prefix) != len(prefixes):
            raise ValueError(f"peer answered {len(reply.per_prefix)} prefixes of {len(prefixes)}")
        return [[draft_from_wire(d) for d in c.drafts] for c in reply.per_prefix]


@dataclass(frozen=True)
class ScoreOutcome:
    """A cloud's scores of one partial solution, and its rewrite when it was asked for one."""

    scores: list[float]  # one per step
    confirmed_steps: int = 0  # low-scored steps the target wrote the same
    rewrite_index: int = 0  # the step the rewrite replaces (steps before it stand)
    rewrite: StepDraft | None = None  # None: every step stands
    draft_accepted: int = 0  # tokens of the rejected draft the rewrite kept


class CloudSteps:
    """Step speculation's calls to one cloud, with their bytes counted in an account."""

    def __init__(
        self, stub: pb_grpc.CloudStub, acc: ReasonAccount, timeout_s: float = 30.0
    ) -> None:
        self.stub, self.acc, self.timeout_s = stub, acc, timeout_s

    async def score(
        self,
        question: str,
        steps: Sequence[str],
        rewrite_below: float,
        rewrite_from: int,
        delimiter: str,
    ) -> ScoreOutcome:
        """Scores of ``steps``; with ``rewrite_below`` > 0 the target also rewrites, from
        ``rewrite_from`` on, the first step scoring below it (see ScoreRequest)."""
        req = pb.ScoreRequest(
            items=[pb.PartialSolution(question=question, steps=list(steps))],
            rewrite_below=rewrite_below,
            rewrite_from=rewrite_from,
            delimiter=delimiter,
        )
        reply = await self.stub.ScoreSteps(req, timeout=self.timeout_s)
        self._count(req, reply)
        if len(reply.items) != 1:
            raise ValueError(f"cloud answered {len(reply.items)} score rows for one item")
        has = reply.HasField("rewrite")
        return ScoreOutcome(
            list(reply.items[0].scores),
            reply.confirmed_steps,
            reply.rewrite_index,
            draft_from_wire(reply.rewrite.step) if has else None,
            reply.rewrite.draft_accepted if has else 0,
        )

    async def write_step(self, question: str, steps: Sequence[str], delimiter: str) -> StepDraft:
        """The target's next step after ``steps``, written from scratch."""
        req = pb.StepRequest(
            prefix=pb.PartialSolution(question=question, steps=list(steps)), delimiter=delimiter
        )
        reply = await self.stub.GenerateStep(req, timeout=self.timeout_s)
        self._count(req, reply)
        return draft_from_wire(reply.step)

    def _count(self, req: object, reply: object) -> None:
        self.acc.bytes_sent += req.ByteSize()  # type: ignore[attr-defined]
        self.acc.bytes_received += reply.ByteSize()  # type: ignore[attr-defined]
