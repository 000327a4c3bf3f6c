"""``tandem simulate calibrate``: measure this machine's models into a calibration file.

What it measures, on problems of its own seed (never the ones validation reports):
- the (drafter, target) pair's per-position survival, greedy: the target's reply is computed
  once, then rounds of k greedy drafts are matched against it (a round keeps the drafts before
  the first mismatch, as greedy verification does);
- the workload's prompt and reply lengths;
- every model call's time, raw (this CPU) or under device profiles (``--edge-device``,
  ``--cloud-device``): then the host's time a call adds beyond its profile's (padding overshoot,
  locks, Python), which the simulator adds per call as ``edge_call_overhead_ms`` and
  ``call_overhead_ms`` (cloud passes).
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Sequence
from typing import Any

from models import task
from models.generate import generate
from models.loader import load_lm
from models.metrics import position_survival
from models.sampling import SamplingParams
from node_runtime.emulation import EmulatedLM, call_ms, emulate

CALIBRATION_SEED = task.HELDOUT_SEED + 70  # problems calibration measures (validation's differ)
GREEDY = SamplingParams(0.0)


def survival(drafter: Any, target: Any, tok: Any, problems: int, k: int, max_new: int) -> dict:
    """Per-position survival of greedy rounds of k drafts over ``problems`` held-out problems,
    with the prompt and reply lengths seen."""
    rounds: list[tuple[int, int]] = []
    prompts, replies = [], []
    for p in task.generate(problems, CALIBRATION_SEED):
        prompt = [tok.bos_id, *tok.encode(p.question)]
        reply = generate(target, prompt, GREEDY, max_new, tok.eos_id)
        prompts.append(len(prompt))
        replies.append(len(reply))
        pos = 0
        while pos < len(reply):
            want = min(k, max_new - pos)
            draft = generate(drafter, prompt + reply[:pos], GREEDY, want, tok.eos_id)
            kept = 0
            while (
                kept < len(draft) and pos + kept < len(reply) and draft[kept] == reply[pos + kept]
            ):
                kept += 1
            rounds.append((len(draft), kept))
            pos += kept + 1
    return {
        "k": k,
        "survival": [s if s is not None else 0.0 for s in position_survival(rounds, k)],
        "rounds": len(rounds),
        "problems": problems,
        "seed": CALIBRATION_SEED,
        "prompt_tokens": prompts,
        "new_tokens": replies,
    }


def call_times(lm: Any, shapes: Sequence[tuple[int, int, int]], reps: int) -> list[dict]:
    """Median wall ms of passes of ``batch`` sequences feeding ``feed`` tokens after
    ``context`` cached ones, for each (batch, context, feed) in ``shapes``; under a profile,
    also what the profile prices and the host's excess over it."""
    out = []
    for batch, context, feed in shapes:
        times = []
        for _ in range(reps):
            sessions = [lm.session() for _ in range(batch)]
            if context:
                lm.extend_batch(sessions, [[5] * context for _ in sessions])
            t0 = time.perf_counter()
            lm.extend_batch(sessions, [[6] * feed for _ in sessions])
            times.append((time.perf_counter() - t0) * 1e3)
        row = {"batch": batch, "context": context, "feed": feed, "ms": statistics.median(times)}
        if isinstance(lm, EmulatedLM):
            row["profile_ms"] = call_ms(lm.profile, [context] * batch, [feed] * batch)
            row["excess_ms"] = row["ms"] - row["profile_ms"]
            row["infeasible"] = lm.stats.infeasible_calls
        out.append(row)
    return out


def calibrate(
    drafter_spec: str = "drafter-int8",
    target_spec: str = "target",
    edge_device: str = "",
    cloud_device: str = "",
    problems: int = 24,
    k: int = 8,
    max_new: int = 48,
    reps: int = 5,
) -> dict[str, Any]:
    """Everything the simulator takes from this machine, as one JSON-able dict."""
    drafter, tok = load_lm(drafter_spec)
    target, _ = load_lm(target_spec)
    out: dict[str, Any] = {
        "pair": {"drafter": drafter_spec, "target": target_spec},
        "machine": f"{platform.machine()} {platform.processor() or platform.system()}",
        "emulated": {"edge": edge_device or "raw", "cloud": cloud_device or "raw"},
    }
    out.update(survival(drafter, target, tok, problems, k, max_new))
    edge, cloud = emulate(drafter, edge_device), emulate(target, cloud_device)
    out["edge_calls"] = call_times(edge, [(1, 0, 20), (1, 20, 1), (1, 40, 1), (1, 20, 2)], reps)
    out["cloud_calls"] = call_times(
        cloud, [(1, 0, 24), (1, 20, 5), (4, 20, 5), (16, 20, 5), (16, 20, 1)], reps
    )
    for rows, key in (
        (out["edge_calls"], "edge_call_overhead_ms"),
        (out["cloud_calls"], "call_overhead_ms"),
    ):
        excess = [r["excess_ms"] for r in rows if "excess_ms" in r]
        out[key] = max(statistics.median(excess), 0.0) if excess else 0.0
    return out


def survival_of(calibration: dict[str, Any]) -> tuple[float, ...]:
    """The survival curve a calibration file holds."""
    return tuple(float(s) for s in calibration["survival"])
