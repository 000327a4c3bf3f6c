"""Hypothesis strategies and a running cluster for the fuzz tests.

The cluster is ``tandem.fuzz_targets.Harness``: a real cloud (bundled target), an edge (bundled
drafter), a coordinator, an expert server (bundled MoE) and the edge's OpenAI API, all on
127.0.0.1 with the process's default security (mTLS), on an event loop in a background thread so
that hypothesis drives it from the test thread.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Coroutine
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from tandem.fuzz_targets import Harness, methods
from tandem.fuzzing import Tally

# Few examples per property: each is a real RPC; the ``tandem fuzz`` command runs the many.
FAST = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
SEEDS = st.integers(min_value=0, max_value=2**32 - 1)
RPCS = methods()


class Cluster:
    """The harness's servers on a loop in a daemon thread; ``run`` runs a coroutine there."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.tally = Tally()
        self.harness = Harness(self.tally, timeout_s=3.0)
        self.run(self.harness.start(), 120)

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 60.0) -> Any:
        """Run ``coro`` on the cluster's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def grpc_case(self, seed: int, index: int) -> None:
        """One fuzzed call to the ``index``-th RPC, its inputs drawn from ``seed``."""
        svc, m = RPCS[index % len(RPCS)]
        self.run(self.harness.grpc_case(random.Random(seed), svc, m))

    def findings(self) -> list[dict[str, Any]]:
        """Every finding so far (crash, UNKNOWN/INTERNAL, a status without a message)."""
        return list(self.tally.findings)

    def close(self) -> None:
        """Stop the servers, then the loop."""
        self.run(self.harness.stop(), 60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
