"""Verify clients on a cloud node, as other edges would, in a process of their own.

    python -m tandem.loadgen ADDRESS [--sessions 8] [--k 4] [--seconds S] [--refs FILE --json]

Two uses:
- background load (``verify_load``): random drafts until SIGTERM, so the cloud serves rounds while
  something else is measured; prints the number of rounds at the end;
- measurement (``--refs FILE --json``): each session replays known continuations (the target's
  own greedy output, read from FILE as ``[[prompt, continuation], ...]``), so every draft is kept
  and the load is pure verification; after a warm-up, counts rounds for ``--seconds`` and prints
  one JSON line: rounds, seconds, rounds per second, the verdicts' mean batch size, the share of
  drafts kept (1 when replaying), and the median and 95th percentile of each round's round trip
  minus the cloud's model time (ms), the transport and batching overhead.

Running as its own process keeps the clients' Python work off the interpreter being measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models import task
from node_runtime.serving import aio_channel
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

Ref = tuple[list[int], list[int]]  # a prompt and a continuation the target writes after it
RANDOM_SPAN = 60  # random-draft sessions end before this position
StreamCall = Any  # grpc.aio.StreamStreamCall (its generics vary between grpcio versions)


@dataclass
class Tally:
    """What the clients measured inside the counting window."""

    start: float  # perf_counter when counting starts (after the warm-up)
    stop: float  # perf_counter when every client stops
    rounds: int = 0  # verify rounds answered inside the window
    batch_sum: int = 0  # sum of the verdicts' batch sizes (for the mean)
    drafted: int = 0  # draft tokens sent in those rounds
    accepted: int = 0  # of those, the ones the cloud kept
    overhead_ms: list[float] = field(default_factory=list)  # round trip minus model time

    def note(self, t0: float, t1: float, k: int, v: pb.VerifyReply) -> None:
        """One round of ``k`` drafts sent at ``t0`` and answered at ``t1``; counted if it began
        in the window."""
        if t0 >= self.start:
            self.rounds += 1
            self.batch_sum += v.batch_size
            self.drafted += k
            self.accepted += v.accepted
            self.overhead_ms.append((t1 - t0) * 1e3 - v.model_ms)


def _random_rounds(i: int) -> Iterator[Ref]:
    """Task questions with random continuations to draft from: rounds of random drafts."""
    tok = task.WordTokenizer()
    rng = random.Random(i)
    n = 0
    while True:
        problem = task.generate(1, 1000 + i * 100_000 + n)[0]
        n += 1
        prompt = [tok.bos_id, *tok.encode(problem.question)]
        # sessions end before position RANDOM_SPAN, well inside the model's window
        yield prompt, [rng.randrange(tok.vocab_size) for _ in range(RANDOM_SPAN - len(prompt))]


async def _session(
    call: StreamCall, sid: str, prompt: list[int], cont: list[int], k: int, tally: Tally
) -> None:
    """Open ``sid`` over ``prompt``, send rounds drafting from ``cont`` until it runs out (or the
    window closes), close it. With a random ``cont`` the verdict's position moves the cursor."""
    await call.write(pb.SpecRequest(open=pb.OpenSession(session_id=sid, prompt=prompt)))
    await call.read()
    pos, rid = len(prompt), 0
    while pos - len(prompt) + k + 1 <= len(cont) and time.perf_counter() < tally.stop:
        rid += 1
        draft = cont[pos - len(prompt) : pos - len(prompt) + k]
        msg = pb.VerifyRequest(session_id=sid, round_id=rid, base_position=pos, draft=draft)
        t0 = time.perf_counter()
        await call.write(pb.SpecRequest(verify=msg))
        v = (await call.read()).verdict
        tally.note(t0, time.perf_counter(), len(draft), v)
        pos = v.position
    await call.write(pb.SpecRequest(close=pb.CloseSession(session_id=sid)))
    await call.read()


async def _client(
    address: str, i: int, sessions: int, k: int, refs: Sequence[Ref], tally: Tally
) -> None:
    """One client: its own channel and stream, one session after another until the window ends."""
    source = iter(refs[j % len(refs)] for j in range(i, 1 << 62, sessions)) if refs else None
    randoms = _random_rounds(i)
    async with aio_channel(address) as ch:
        timeout = max(tally.stop - time.perf_counter(), 1) + 30
        call = pb_grpc.CloudStub(ch).Speculate(timeout=timeout)
        n = 0
        while time.perf_counter() < tally.stop:
            prompt, cont = next(source) if source is not None else next(randoms)
            sid, n = f"load-{os.getpid()}-{i}-{n}", n + 1
            await _session(call, sid, prompt, cont, k, tally)
        await call.done_writing()


async def run(
    address: str,
    sessions: int,
    k: int,
    seconds: float,
    refs: Sequence[Ref] = (),
    warmup: float = 0.0,
) -> Tally:
    """Rounds that ``sessions`` concurrent clients got answered in ``seconds`` after ``warmup``."""
    now = time.perf_counter()
    tally = Tally(start=now + warmup, stop=now + warmup + seconds)
    await asyncio.gather(*(_client(address, i, sessions, k, refs, tally) for i in range(sessions)))
    return tally


def summary(tally: Tally, seconds: float, cpu_share: float | None = None) -> dict[str, Any]:
    """The JSON line a measurement prints; ``cpu_share`` is this process's CPU seconds per
    second over the run (near 1, the clients themselves may limit the rate)."""
    oh = sorted(tally.overhead_ms)

    def pct(q: float) -> float | None:
        return oh[min(len(oh) - 1, int(q * len(oh)))] if oh else None

    return {
        "rounds": tally.rounds,
        "seconds": seconds,
        "rounds_per_s": tally.rounds / seconds,
        "mean_batch_size": tally.batch_sum / tally.rounds if tally.rounds else None,
        "acceptance_rate": tally.accepted / tally.drafted if tally.drafted else None,
        "overhead_ms_p50": pct(0.5),
        "overhead_ms_p95": pct(0.95),
        "client_cpu_share": cpu_share,
    }


def measure(
    address: str, refs_file: Path, sessions: int, k: int, seconds: float, warmup: float = 0.3
) -> dict[str, Any]:
    """Run a measurement in a new process and return its JSON summary."""
    cmd = [sys.executable, "-m", "tandem.loadgen", address, "--sessions", str(sessions)]
    cmd += ["--k", str(k), "--seconds", str(seconds), "--warmup", str(warmup)]
    cmd += ["--refs", str(refs_file), "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + warmup + 120)
    if done.returncode != 0:
        raise RuntimeError(f"load generator exited with {done.returncode}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


@contextmanager
def verify_load(address: str, sessions: int = 4, k: int = 4) -> Iterator[None]:
    """Load ``address`` with random drafts from a separate process for the duration of the block."""
    cmd = [sys.executable, "-m", "tandem.loadgen", address]
    cmd += ["--sessions", str(sessions), "--k", str(k)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> int:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("address")
    p.add_argument("--sessions", type=int, default=4)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--seconds", type=float, default=3600.0)
    p.add_argument("--warmup", type=float, default=0.0, help="seconds before counting starts")
    p.add_argument("--refs", default="", help="JSON [[prompt, continuation], ...] to replay")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    a = p.parse_args()
    if a.sessions < 1 or a.k < 1 or a.seconds <= 0:
        p.error("--sessions and --k must be >= 1 and --seconds > 0")
    refs: list[Ref] = []
    if a.refs:
        refs = [(list(x), list(y)) for x, y in json.loads(Path(a.refs).read_text())]
        if not any(len(c) > a.k for _, c in refs):
            p.error(f"--refs: no continuation longer than --k {a.k}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    c0, t0 = time.process_time(), time.perf_counter()
    tally = asyncio.run(run(a.address, a.sessions, a.k, a.seconds, refs, a.warmup))
    share = (time.process_time() - c0) / (time.perf_counter() - t0)
    print(json.dumps(summary(tally, a.seconds, share)) if a.json else tally.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
