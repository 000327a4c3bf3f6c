"""What an edge node measures about itself: admission, counters, acceptance, drafter speed.

The servicer counts through this; the agent's telemetry reads it. Calibration times the drafter
once at start, so the first plans use this device's real speed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from edge_node.clouds import CloudDirectory
from edge_node.speculation import SpecResult
from models.base import CausalLM, Tokenizer
from models.generate import generate
from models.sampling import SamplingParams
from node_runtime.errors import Overloaded
from node_runtime.lifecycle import RateWindow
from node_runtime.telemetry import AcceptanceStats, Reading


class Admission:
    """Requests in progress, at most ``limit``; past it a request is refused (Overloaded)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0

    @contextlib.contextmanager
    def slot(self, what: str = "requests") -> Iterator[None]:
        """Hold one place while the request runs."""
        if self.active >= self.limit:
            raise Overloaded(f"{what}: {self.active} in progress (max {self.limit})")
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1


class EdgeStats:
    """Counters since start, acceptance per (drafter, target) pair, drafter ms per token."""

    def __init__(self, drafter_name: str) -> None:
        self.drafter_name = drafter_name
        self.window = RateWindow()  # telemetry rates since the previous sample
        self.draft_ms: float | None = None  # EWMA of drafter ms per drafted token
        self.acceptance: dict[tuple[str, str], AcceptanceStats] = {}  # (drafter, target)
        self.counts: dict[str, float] = {
            "requests": 0.0,
            "degraded": 0.0,
            "generated_tokens": 0.0,
            "drafted_tokens": 0.0,
            "accepted_tokens": 0.0,
            "verify_rounds": 0.0,
            "rejected": 0.0,
            "busy_s": 0.0,
            "reason_requests": 0.0,
            "propose_requests": 0.0,
        }

    def count(self, r: SpecResult, target: str) -> None:
        """Fold one finished Solve request in; ``target`` names the model that verified."""
        a = r.account
        if a.drafted_tokens:
            pair = (self.drafter_name, target)
            self.acceptance[pair] = self.acceptance.get(pair, AcceptanceStats()) + AcceptanceStats(
                a.drafted_tokens, a.accepted_tokens, a.verify_rounds, a.full_rounds
            )
            per = 1e3 * a.edge_model_s / a.drafted_tokens
            self.draft_ms = per if self.draft_ms is None else 0.7 * self.draft_ms + 0.3 * per
        c = self.counts
        c["requests"] += 1
        c["degraded"] += float(r.degraded)
        c["generated_tokens"] += a.generated_tokens
        c["drafted_tokens"] += a.drafted_tokens
        c["accepted_tokens"] += a.accepted_tokens
        c["verify_rounds"] += a.verify_rounds

    def calibrate(self, lm: CausalLM, tok: Tokenizer, tokens: int = 8) -> None:
        """Time a short greedy draft (its second run: the first pays warm-up)."""
        prompt = [tok.bos_id if tok.bos_id is not None else 0] * 4
        generate(lm, prompt, SamplingParams(), tokens, None)
        t0 = time.perf_counter()
        generate(lm, prompt, SamplingParams(), tokens, None)
        self.draft_ms = (time.perf_counter() - t0) * 1e3 / (tokens + 1)

    def reading(self, active: int, clouds: CloudDirectory) -> Reading:
        """This node's telemetry: load, RTT to each cloud, acceptance per pair, draft cost."""
        return Reading(
            active_sessions=active,
            tokens_per_s=self.window.rate("tokens", self.counts["generated_tokens"]),
            busy_fraction=min(1.0, self.window.rate("busy_s", self.counts["busy_s"])),
            rtt_ms=dict(clouds.rtt_ms),
            acceptance=dict(self.acceptance),
            extra={"draft_ms_per_token": self.draft_ms} if self.draft_ms else {},
        )

    def values(self, active: int) -> dict[str, float]:
        """The counters for Metrics, with the requests in progress and the acceptance rate."""
        values = dict(self.counts)
        values["active_requests"] = float(active)
        d = values["drafted_tokens"]
        values["acceptance_rate"] = values["accepted_tokens"] / d if d else 0.0
        return values
