"""Requests the chaos suite sends, and what became of each one.

Every request is a streaming ``SolveStream`` to an edge with a deadline; its record says how it
ended (``ok`` with the reply's own account: degraded, the note, the cloud that finished it; or
the gRPC status it failed with), when it started and ended, and whether it outlived its deadline
(hung). A request whose record never closes is lost.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import grpc

from models import task
from node_runtime.serving import aio_channel
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

# A status is clean when it names what happened; UNKNOWN and INTERNAL are not.
CLEAN = {
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "INVALID_ARGUMENT",
    "CANCELLED",
}
HANG_SLACK_S = 2.0  # a request still open this long after its deadline hangs


@dataclass
class Record:
    """One request and its outcome."""

    request_id: str
    edge: str  # the edge node it was sent to
    scenario: str  # the fault scenario it ran under
    start: float  # wall time sent
    deadline_s: float  # the deadline it carried
    end: float = 0.0  # wall time it ended (0: never)
    outcome: str = "open"  # ok, or the status code name, or "open" (lost)
    tokens: int = 0  # tokens streamed to the client
    degraded: bool = False  # the edge finished alone (its reply says so)
    note: str = ""  # the reply's note: which cloud was lost and why
    cloud_node: str = ""  # the cloud that finished it
    mode: str = ""  # the mode that finished it
    details: str = ""  # the status message, when it failed
    hit_by: list[str] = field(default_factory=list)  # faults that hit it, with the evidence

    @property
    def clean(self) -> bool:
        """Completed, or failed with a clean status."""
        return self.outcome == "ok" or self.outcome in CLEAN

    @property
    def hung(self) -> bool:
        """Still open (or ended) past its deadline plus slack."""
        end = self.end or time.time()
        return end - self.start > self.deadline_s + HANG_SLACK_S

    def as_json(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


class Load:
    """Concurrent clients sending requests to edges until told to stop; keeps every record."""

    def __init__(self, max_new: int = 48, deadline_s: float = 30.0, seed: int = 0) -> None:
        self.max_new = max_new  # tokens a request asks for
        self.deadline_s = deadline_s  # deadline of every request
        self.records: list[Record] = []
        self.scenario = ""  # set by the runner: the scenario new requests are filed under
        self._problems = task.generate(64, task.HELDOUT_SEED + 21 + seed)
        self._n = 0

    def _question(self) -> str:
        self._n += 1
        return self._problems[self._n % len(self._problems)].question

    async def one(
        self,
        edge: str,
        address: str,
        read_delay_s: float = 0.0,
        deadline_s: float | None = None,
        on_first: Callable[[Record], None] | None = None,
    ) -> Record:
        """One streaming request to ``edge`` at ``address``; ``read_delay_s`` makes the client a
        slow consumer (it sleeps before reading each event)."""
        deadline = deadline_s or self.deadline_s
        rec = Record(uuid.uuid4().hex[:16], edge, self.scenario, time.time(), deadline)
        self.records.append(rec)
        req = pb.SolveRequest(
            request_id=rec.request_id,
            prompt=self._question(),
            mode=pb.MODE_TOKEN_SPECULATION,
            max_new_tokens=self.max_new,
        )
        async with aio_channel(address) as ch:
            call = pb_grpc.EdgeStub(ch).SolveStream(req, timeout=deadline)
            try:
                async for ev in call:
                    if ev.tokens:
                        if rec.tokens == 0 and on_first is not None:
                            on_first(rec)
                        rec.tokens += len(ev.tokens)
                    if ev.HasField("done"):
                        d = ev.done
                        rec.degraded, rec.note, rec.cloud_node = d.degraded, d.note, d.cloud_node
                        rec.mode = pb.Mode.Name(d.mode)
                        rec.outcome = "ok"
                    if read_delay_s:
                        await asyncio.sleep(read_delay_s)
                if rec.outcome == "open":
                    rec.outcome = "NO_REPLY"  # the stream ended without its last event
            except grpc.aio.AioRpcError as exc:
                rec.outcome, rec.details = exc.code().name, exc.details() or ""
            except asyncio.CancelledError:
                rec.outcome = "CANCELLED"
                rec.end = time.time()
                raise
        rec.end = time.time()
        return rec

    async def clients(
        self, edge: str, address: str, n: int, stop: asyncio.Event, pause_s: float = 0.05
    ) -> None:
        """``n`` clients sending one request after another to ``edge`` until ``stop`` is set."""

        async def client() -> None:
            while not stop.is_set():
                await self.one(edge, address)
                await asyncio.sleep(pause_s)

        await asyncio.gather(*(client() for _ in range(n)))

    def in_flight(self, at: float, edge: str | None = None) -> list[Record]:
        """Requests open at wall time ``at`` (to ``edge``, if given)."""
        return [
            r
            for r in self.records
            if r.start <= at and (r.end == 0.0 or r.end >= at) and edge in (None, r.edge)
        ]
