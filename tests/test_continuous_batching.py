"""Continuous batching on the cloud (iteration-level scheduling, as in Orca and vLLM): verify rounds
and cloud-only generation share forward passes of the real bundled target, in process, and each
gets what it would get alone."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Sequence
from typing import Any

import numpy as np
import pytest
from support import Blocker, until

from cloud_node.engine import EngineConfig, RequestError, Round, RoundResult, VerifyEngine
from cloud_node.model_thread import Priority
from models import task
from models.base import CausalLM, LMSession
from models.generate import generate
from models.loader import load_lm
from models.sampling import SamplingParams, probs
from models.speculative import Proposal, Verdict, verify, verify_batch

GREEDY = SamplingParams(0.0)


def run(coro: Coroutine[Any, Any, Any], limit_s: float = 90) -> Any:
    return asyncio.run(asyncio.wait_for(coro, limit_s))


@pytest.fixture(scope="module")
def lm_tok() -> tuple[CausalLM, Any]:
    return load_lm("target")


def prompts(tok: Any, n: int) -> list[list[int]]:
    return [[tok.bos_id, *tok.encode(p.question)] for p in task.generate(n, 7)]


class Recorder:
    """The target, logging what each forward pass held: (verify rows, generation rows)."""

    def __init__(self, lm: CausalLM) -> None:
        self.lm, self.name, self.vocab_size, self.max_len = lm, lm.name, lm.vocab_size, lm.max_len
        self.verifying: set[int] = set()  # ids of the verify sessions' caches
        self.log: list[object] = []  # passes as (verify rows, generation rows), other work named
        self.pause_at = 0  # pause in this pass (1-based) until go_on is set; 0: never
        self.paused = threading.Event()
        self.go_on = threading.Event()

    @property
    def passes(self) -> list[tuple[int, int]]:
        return [x for x in self.log if isinstance(x, tuple)]

    def session(self) -> LMSession:
        return self.lm.session()

    def extend_batch(
        self, sessions: Sequence[LMSession], tokens: Sequence[Sequence[int]]
    ) -> list[np.ndarray]:
        v = sum(id(s) in self.verifying for s in sessions)
        self.log.append((v, len(sessions) - v))
        if len(self.passes) == self.pause_at:
            self.paused.set()
            self.go_on.wait(30)
        return self.lm.extend_batch(sessions, tokens)


def draft_for(lm: CausalLM, prompt: list[int], k: int, wrong_at: int | None) -> np.ndarray:
    """The target's own greedy continuation, with the token at ``wrong_at`` replaced."""
    d = np.asarray(generate(lm, prompt, GREEDY, k, None), dtype=np.int64)
    if wrong_at is not None:
        d[wrong_at] = (d[wrong_at] + 1) % lm.vocab_size
    return d


def alone(lm: CausalLM, prompt: list[int], proposal: Proposal) -> Verdict:
    """The verdict of one round verified by itself, on a fresh cache."""
    k = len(proposal.tokens)
    logits = lm.session().extend([*prompt, *proposal.tokens.tolist()])[-(k + 1) :]
    return verify(proposal, logits, GREEDY, np.random.default_rng(0))


def open_verifying(engine: VerifyEngine, rec: Recorder, sid: str, prompt: list[int]) -> None:
    engine.open(sid, prompt, GREEDY)
    rec.verifying.add(id(engine.sessions[sid].lm_session))


# ---------------------------------------------------------------- the pieces, alone


def test_one_pass_over_mixed_feed_lengths_equals_separate_passes(lm_tok) -> None:
    """A prompt, one-token steps and verify feeds of several k in one extend_batch: the padding
    changes no token, and every cache ends as if extended alone."""
    lm, tok = lm_tok
    ps = prompts(tok, 6)
    cached = [[], ps[1], ps[2], ps[3][:5], ps[4], ps[5][:-1]]  # already in each cache
    feeds = [ps[0], [7], [9], ps[3][5:], [*ps[4][-1:], 5, 6, 7, 8, 9], ps[5][-1:] + [3, 4]]
    batched, single = [lm.session() for _ in ps], [lm.session() for _ in ps]
    for a, b, c in zip(batched, single, cached, strict=True):
        if c:
            a.extend(c)
            b.extend(c)
    together = lm.extend_batch(batched, feeds)
    for x, s, f in zip(together, single, feeds, strict=True):
        y = s.extend(f)
        assert x.shape == y.shape == (len(f), lm.vocab_size)
        assert (x.argmax(-1) == y.argmax(-1)).all()
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-3)
    for a, b in zip(batched, single, strict=True):  # the caches were written at the right places
        assert a.length == b.length
        np.testing.assert_allclose(a.extend([4]), b.extend([4]), rtol=0, atol=1e-3)


def test_batched_verification_gives_every_round_its_verdict_alone(lm_tok) -> None:
    """verify_batch over greedy and sampled rounds of different k equals verify one by one, with
    each sampled round drawing from its own seeded generator."""
    lm, tok = lm_tok
    drafter, _ = load_lm("drafter")
    hot = SamplingParams(1.0)
    rounds = []
    for i, (p, k, wrong) in enumerate(
        zip(prompts(tok, 6), [1, 2, 3, 4, 5, 6], [0, None, 1, 3, None, 2], strict=True)
    ):
        d = draft_for(lm, p, k, wrong)
        rows = lm.session().extend([*p, *d.tolist()])[-(k + 1) :]
        q = probs(drafter.session().extend([*p, *d.tolist()])[-(k + 1) : -1], hot)
        params = GREEDY if i % 2 == 0 else hot
        rounds.append((Proposal(d, None if params.greedy else q), rows, params, i))
    got = verify_batch(
        [r[0] for r in rounds],
        [r[1] for r in rounds],
        [r[2] for r in rounds],
        [np.random.default_rng(r[3]) for r in rounds],
    )
    want = [verify(pr, rows, pa, np.random.default_rng(seed)) for pr, rows, pa, seed in rounds]
    assert got == want
    assert {v.accepted for v, r in zip(got, rounds, strict=True) if r[2].greedy} == {0, 1, 5}


# ---------------------------------------------------------------- the model loop


def test_generations_and_verify_rounds_share_every_iteration(lm_tok) -> None:
    """3 generations of 24 tokens and 4 rounds take 24 forward passes, not 3 * 24 + 4 (one at a
    time) or 24 + 1 (rounds and generation apart); each gets what it gets alone, and the
    iteration's time is split among them by tokens fed."""
    lm, tok = lm_tok
    rec, ps, n_new = Recorder(lm), prompts(tok, 7), 24
    gen_prompts, round_prompts = ps[:3], ps[3:]
    proposals = [
        Proposal(draft_for(lm, p, k, w), None)
        for p, k, w in zip(round_prompts, [2, 3, 4, 5], [None, 0, 2, None], strict=True)
    ]

    async def main() -> tuple[list[Any], list[RoundResult], dict[str, float]]:
        engine = VerifyEngine(rec, EngineConfig())  # type: ignore[arg-type]
        engine.start()
        try:
            for i, p in enumerate(round_prompts):
                open_verifying(engine, rec, f"s{i}", p)
            block = Blocker(engine.thread)
            await block.held()
            gens = [
                asyncio.create_task(engine.generate(p, GREEDY, n_new, None)) for p in gen_prompts
            ]
            rounds = [
                asyncio.create_task(engine.submit(Round(f"s{i}", 1, len(p), pr)))
                for i, (p, pr) in enumerate(zip(round_prompts, proposals, strict=True))
            ]
            await until(lambda: engine.loop.waiting_rounds == 4, "the rounds wait")
            await block.done()
            return await asyncio.gather(*gens), await asyncio.gather(*rounds), engine.metrics()
        finally:
            await engine.stop()

    gens, results, m = run(main())
    assert rec.passes == [(4, 3)] + [(0, 3)] * (n_new - 1)
    assert m["iterations"] == n_new and m["batches"] == 1 and m["generation_passes"] == n_new
    for g, p in zip(gens, gen_prompts, strict=True):
        assert g.tokens == generate(lm, p, GREEDY, n_new, None)
    for r, p, pr in zip(results, round_prompts, proposals, strict=True):
        assert r.verdict == alone(lm, p, pr)
        assert r.position == len(p) + r.verdict.emitted and r.batch_size == 4
    # costs: a round is charged its tokens' share of the one iteration it shared
    fed = [len(p) + len(pr.tokens) for p, pr in zip(round_prompts, proposals, strict=True)]
    total = sum(fed) + sum(len(p) for p in gen_prompts)
    wall = results[0].model_ms
    for r, n in zip(results, fed, strict=True):
        assert r.model_ms == wall
        assert r.share_ms == pytest.approx(wall * n / total)
        assert r.model_cpu_s == pytest.approx(results[0].model_cpu_s * n / fed[0])
    # every generation took part in all the iterations; the shares add up to their wall time
    assert len({g.model_ms for g in gens}) == 1
    shares = sum(r.share_ms for r in results) + sum(g.share_ms for g in gens)
    assert shares == pytest.approx(gens[0].model_ms)
    assert m["verify_model_s"] + m["generate_model_s"] == pytest.approx(shares / 1e3)


def test_a_round_arriving_during_a_long_generation_joins_the_next_iteration(lm_tok) -> None:
    lm, tok = lm_tok
    rec, (p_gen, p_round) = Recorder(lm), prompts(tok, 2)
    proposal = Proposal(draft_for(lm, p_round, 4, 2), None)
    rec.pause_at = 3

    async def main() -> tuple[Any, RoundResult]:
        engine = VerifyEngine(rec, EngineConfig())  # type: ignore[arg-type]
        engine.start()
        try:
            open_verifying(engine, rec, "v", p_round)
            gen = asyncio.create_task(engine.generate(p_gen, GREEDY, 40, None))
            await until(rec.paused.is_set, "the generation in its third iteration")
            rnd = asyncio.create_task(engine.submit(Round("v", 1, len(p_round), proposal)))
            await until(lambda: engine.loop.waiting_rounds == 1, "the round waits")
            rec.go_on.set()
            return await gen, await rnd
        finally:
            await engine.stop()

    gen, res = run(main())
    passes = rec.passes
    assert passes[:3] == [(0, 1)] * 3 and passes[3] == (1, 1)  # the very next pass, shared
    assert len(passes) == 40  # the round cost the generation no pass of its own
    assert gen.tokens == generate(lm, p_gen, GREEDY, 40, None)
    assert res.verdict == alone(lm, p_round, proposal)


def test_a_round_goes_before_step_work_while_the_loop_waits_for_the_thread(lm_tok) -> None:
    """The loop waits for the thread at generation priority, behind step work; a round arriving
    then raises its turn to verify priority, so the round goes first."""
    lm, tok = lm_tok
    rec, (p_gen, p_round) = Recorder(lm), prompts(tok, 2)
    proposal = Proposal(draft_for(lm, p_round, 3, None), None)

    async def main() -> RoundResult:
        engine = VerifyEngine(rec, EngineConfig())  # type: ignore[arg-type]
        engine.start()
        try:
            open_verifying(engine, rec, "v", p_round)
            block = Blocker(engine.thread)
            await block.held()
            gen = asyncio.create_task(engine.generate(p_gen, GREEDY, 3, None))
            await until(lambda: engine.thread.waiting == 1, "the loop waits")
            step = asyncio.create_task(
                engine.run_model(lambda: rec.log.append("step"), Priority.STEPS)
            )
            await until(lambda: engine.thread.waiting == 2, "step work waits")
            rnd = asyncio.create_task(engine.submit(Round("v", 1, len(p_round), proposal)))
            await until(lambda: engine.loop.waiting_rounds == 1, "the round waits")
            await block.done()
            await asyncio.gather(gen, step)
            return await rnd
        finally:
            await engine.stop()

    res = run(main())
    assert rec.log == [(1, 1), "step", (0, 1), (0, 1)]
    assert res.verdict == alone(lm, p_round, proposal)


def test_the_queues_stay_bounded_and_fair_under_the_loop(lm_tok) -> None:
    lm, tok = lm_tok
    rec, ps = Recorder(lm), prompts(tok, 3)
    config = EngineConfig(queue_limit=2, max_generations=2, max_client_generations=1)

    async def main() -> list[Any]:
        engine = VerifyEngine(rec, config)  # type: ignore[arg-type]
        engine.start()
        try:
            for i, p in enumerate(ps):
                open_verifying(engine, rec, f"s{i}", p)
            block = Blocker(engine.thread)
            await block.held()
            work = [
                asyncio.create_task(
                    engine.submit(Round(f"s{i}", 1, len(p), Proposal(draft_for(lm, p, 2, 0), None)))
                )
                for i, p in enumerate(ps[:2])
            ]
            await until(lambda: engine.loop.waiting_rounds == 2, "two rounds wait")
            late = Round("s2", 1, len(ps[2]), Proposal(draft_for(lm, ps[2], 2, 0), None))
            with pytest.raises(RequestError, match="verify queue full") as full:
                await engine.submit(late)
            assert full.value.kind == "exhausted"
            work.append(asyncio.create_task(engine.generate(ps[0], GREEDY, 5, None, "a")))
            await until(lambda: engine.generations.active == 1, "a's generation is admitted")
            with pytest.raises(RequestError, match="its share") as share:
                await engine.generate(ps[1], GREEDY, 5, None, "a")
            work.append(asyncio.create_task(engine.generate(ps[1], GREEDY, 5, None, "b")))
            await until(lambda: engine.generations.active == 2, "b's generation is admitted")
            with pytest.raises(RequestError, match="generation queue full") as queue:
                await engine.generate(ps[2], GREEDY, 5, None, "c")
            assert share.value.kind == queue.value.kind == "exhausted"
            await block.done()
            return await asyncio.gather(*work)
        finally:
            await engine.stop()

    out = run(main())
    assert [len(g.tokens) for g in out[2:]] == [5, 5]
    assert rec.passes[0] == (2, 2)  # what was admitted shared the first pass
