"""What one request does on one cloud, per mode: generators the request's process runs.

Each raises ``CloudLost`` when its cloud goes; the request's progress (``_Req.done``) is kept,
so the next cloud picks up from what is committed, as the live edge does.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import simpy

from models.metrics import pipeline_hit_probability
from simulations.fleet.cloud import CloudLost, SimCloud

if TYPE_CHECKING:
    from simulations.fleet.fleet import Fleet, _Req


def _reset(f: Fleet, seconds: float) -> None:
    """A link reset within ``seconds`` breaks the session: the request fails over."""
    if f.link.reset_during(f.rng, seconds):
        f.link_resets += 1
        raise CloudLost("link reset")


def cloud_only(f: Fleet, r: _Req, cloud: SimCloud) -> simpy.events.ProcessGenerator:
    """The prompt goes up, the cloud generates the rest (continuously batched), the reply comes
    back whole (the live Generate is not streamed, so its first token is its last)."""
    env, a = f.env, r.a
    prompt = a.prompt_tokens + r.done
    left = a.new_tokens - r.done
    t0 = env.now
    yield env.timeout(f.link.up_ms(f.rng, prompt) / 1e3)
    yield cloud.generate(0, prompt, left)
    yield env.timeout(f.link.down_ms(f.rng, left) / 1e3)
    _reset(f, env.now - t0)
    r.done = a.new_tokens
    r.ttft = env.now if r.ttft < 0 else r.ttft


def speculate(
    f: Fleet, r: _Req, cloud: SimCloud, k: int, pipelined: bool
) -> simpy.events.ProcessGenerator:
    """Token speculation over one session: open (one exchange), then rounds.

    Plain, a round is: draft k, send, verify pass, verdict back. Pipelined, the edge drafts the
    next round (k + 1 steps: the guess of the bonus token, then k drafts) while one is in
    flight; it is used when every draft was kept and the bonus equals the guess, and the next
    round then leaves as soon as both the verdict and the drafts are there
    (``models.metrics.pipelined_round_ms`` is the mean of exactly this).
    """
    env, a, link, rng = f.env, r.a, f.link, f.rng
    cap = f.cfg.draft_cap
    yield env.timeout((link.up_ms(rng, a.prompt_tokens + r.done) + link.down_ms(rng)) / 1e3)
    fresh = True  # the cloud's cache is empty: the first round feeds every committed token
    edge_pending = a.prompt_tokens + r.done  # tokens the drafter's cache lacks
    carry_ms = 0.0  # time already due before this round's message leaves (verdict's way back)
    ready_at = -1.0  # pipelined: when the drafts of a round drafted ahead are ready
    while r.done < a.new_tokens:
        committed = a.prompt_tokens + r.done
        want = max(1, min(k, cap - r.done))
        if ready_at >= 0:  # drafted ahead and confirmed: leaves when both are there
            wait_ms = max(carry_ms, (ready_at - env.now) * 1e3)
        else:
            draft = f.edge.draft_ms(committed - edge_pending, edge_pending, want)
            f.edge_busy_s += draft / 1e3
            wait_ms = carry_ms + draft
        up = link.up_ms(rng, want)
        yield env.timeout((wait_ms + up) / 1e3)
        sent_at = env.now - up / 1e3
        if pipelined and want == k:
            ahead = f.edge.draft_ms(committed + want - 1, 1, k + 1)
            f.edge_busy_s += ahead / 1e3
        else:
            ahead = -1.0
        feed = committed + want if fresh else 1 + want
        context = 0 if fresh else committed - 1
        t0 = env.now
        yield cloud.verify(context, feed)
        fresh = False
        kept = f.acceptance.draw(rng, want)
        r.rounds += 1
        r.drafted += want
        r.accepted += kept
        gained = min(kept + 1, a.new_tokens - r.done)
        r.done += gained
        carry_ms = link.down_ms(rng)
        if r.ttft < 0:
            r.ttft = env.now + carry_ms / 1e3
        _reset(f, env.now - t0 + (up + carry_ms) / 1e3)
        hit = ahead >= 0 and kept == want and rng.random() < f.guess
        ready_at = sent_at + ahead / 1e3 if hit else -1.0
        # the drafter's cache keeps the kept drafts; the bonus (and the last draft, when every
        # draft was kept, since it was never fed) are fed with the next round's first call
        edge_pending = 2 if kept == want else 1
    yield env.timeout(carry_ms / 1e3)


def steps(f: Fleet, r: _Req, cloud: SimCloud) -> simpy.events.ProcessGenerator:
    """Step speculation: the edge drafts a step of ``step_tokens`` and sends its text; the cloud
    scores it in one pass and keeps it with probability ``step_acceptance``, else rewrites it
    (a generation of ``step_tokens``, continuously batched) before it answers."""
    env, a, link, rng, cfg = f.env, r.a, f.link, f.rng, f.cfg
    S = cfg.step_tokens
    pending = a.prompt_tokens + r.done
    while r.done < a.new_tokens:
        committed = a.prompt_tokens + r.done
        n = min(S, a.new_tokens - r.done)
        draft = f.edge.draft_ms(committed - pending, pending, n)
        f.edge_busy_s += draft / 1e3
        up = link.up_ms(rng, n)
        yield env.timeout((draft + up) / 1e3)
        t0 = env.now
        yield cloud.verify(committed, n)
        r.rounds += 1
        r.drafted += n
        if rng.random() < cfg.step_acceptance:
            r.accepted += n
        else:
            yield cloud.generate(committed, 1, n)
        down = link.down_ms(rng, n)
        yield env.timeout(down / 1e3)
        _reset(f, env.now - t0 + up / 1e3)
        r.done += n
        pending = n
        if r.ttft < 0:
            r.ttft = env.now


def prm_search(f: Fleet, r: _Req, cloud: SimCloud) -> simpy.events.ProcessGenerator:
    """PRM search: per step the edge drafts ``prm_candidates`` candidates in a batch, the cloud's
    PRM scores them all in one pass, the best is kept (no rewrite)."""
    env, a, link, rng, cfg = f.env, r.a, f.link, f.rng, f.cfg
    S, N = cfg.step_tokens, cfg.prm_candidates
    while r.done < a.new_tokens:
        committed = a.prompt_tokens + r.done
        n = min(S, a.new_tokens - r.done)
        draft = f.edge.candidates_ms(committed, N, n)
        f.edge_busy_s += draft / 1e3
        up = link.up_ms(rng, N * n)
        yield env.timeout((draft + up) / 1e3)
        t0 = env.now
        yield cloud.verify(committed, n, copies=N)
        r.rounds += 1
        r.drafted += N * n
        r.accepted += n
        down = link.down_ms(rng)
        yield env.timeout(down / 1e3)
        _reset(f, env.now - t0 + up / 1e3)
        r.done += n
        if r.ttft < 0:
            r.ttft = env.now


def hit_probability(alpha: float, k: int, guess: float) -> float:
    """P(a round drafted ahead is used), the shared formula (for reports)."""
    return pipeline_hit_probability(alpha, k, guess)


def rounds_needed(new_tokens: int, tokens_per_round: float) -> int:
    """Rounds a request of ``new_tokens`` takes at ``tokens_per_round`` (for reports)."""
    return math.ceil(new_tokens / max(tokens_per_round, 1e-9))
