"""Background load on a cloud node: clients sending verify rounds, as other edges would.

Runs as its own process (``python -m tandem.loadgen``) so the load does not share a core's
Python interpreter with the client being measured.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from models import task
from node_runtime.serving import aio_channel
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc


async def _client(address: str, i: int, k: int, stop_at: float) -> int:
    """Open sessions over task questions and send rounds of random drafts until ``stop_at``."""
    tok = task.WordTokenizer()
    rng = random.Random(i)
    rounds = 0
    async with aio_channel(address) as ch:
        call = pb_grpc.CloudStub(ch).Speculate(timeout=max(stop_at - time.time(), 1) + 30)
        n = 0
        while time.time() < stop_at:
            problem = task.generate(1, 1000 + i * 100_000 + n)[0]
            sid, n = f"load-{os.getpid()}-{i}-{n}", n + 1
            seq = [tok.bos_id, *tok.encode(problem.question)]
            await call.write(pb.SpecRequest(open=pb.OpenSession(session_id=sid, prompt=seq)))
            await call.read()
            pos = len(seq)
            while pos + k < 60 and time.time() < stop_at:
                draft = [rng.randrange(tok.vocab_size) for _ in range(k)]
                msg = pb.VerifyRequest(session_id=sid, round_id=pos, base_position=pos, draft=draft)
                await call.write(pb.SpecRequest(verify=msg))
                pos = (await call.read()).verdict.position
                rounds += 1
            await call.write(pb.SpecRequest(close=pb.CloseSession(session_id=sid)))
            await call.read()
        await call.done_writing()
    return rounds


async def run(address: str, sessions: int, k: int, seconds: float) -> int:
    """Verify rounds sent by ``sessions`` concurrent clients over ``seconds``."""
    stop_at = time.time() + seconds
    return sum(await asyncio.gather(*(_client(address, i, k, stop_at) for i in range(sessions))))


@contextmanager
def verify_load(address: str, sessions: int = 4, k: int = 4) -> Iterator[None]:
    """Load ``address`` from a separate process for the duration of the block."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tandem.loadgen",
            address,
            "--sessions",
            str(sessions),
            "--k",
            str(k),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("address")
    p.add_argument("--sessions", type=int, default=4)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--seconds", type=float, default=3600.0)
    a = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(asyncio.run(run(a.address, a.sessions, a.k, a.seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
