"""Pipelined speculation: the next round is drafted while one is in flight, and the output is
still exactly the target's (greedy equality over a real cloud node on 127.0.0.1, a chi-square
test of the sampled path), with the drafter's cache rolled back whenever the guess was wrong."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import numpy as np
import pytest
from scipy.stats import chisquare

from cloud_node.engine import EngineConfig
from cloud_node.node import CloudConfig, start_cloud
from edge_node.clouds import CloudDirectory
from edge_node.drafter import AheadSignal, Drafter
from edge_node.node import EdgeNodeConfig, start_edge
from edge_node.speculation import SpecResult, SpecSettings, Speculator
from models import task
from models.base import CausalLM
from models.generate import generate
from models.sampling import SamplingParams, probs
from models.speculative import verify
from models.torch_backend import load_torch
from node_runtime.serving import aio_channel
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

TOK = task.WordTokenizer()
GREEDY = SamplingParams()
ALPHA = 1e-3  # a correct sampler fails one run in a thousand
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 300))


def heldout(n: int, seed: int = task.HELDOUT_SEED) -> list[list[int]]:
    return [[TOK.bos_id, *TOK.encode(p.question)] for p in task.generate(n, seed)]


async def speculate(
    target: CausalLM,
    drafter: CausalLM,
    prompts: Sequence[list[int]],
    settings: Sequence[SpecSettings],
    params: SamplingParams = GREEDY,
) -> list[list[SpecResult]]:
    """Every prompt under every settings, through one real cloud node."""
    node = await start_cloud(target, TOK.eos_id)
    clouds = CloudDirectory("edge-test", static=[node.address])
    spec = Speculator(drafter)
    try:
        return [[await spec.run(p, params, s, clouds.pick) for s in settings] for p in prompts]
    finally:
        await clouds.close()
        await node.stop()


@pytest.mark.parametrize("k", [1, 3, 6])
@pytest.mark.parametrize("policy", ["fixed", "heuristic", "rtt"])
def test_greedy_pipelined_speculation_equals_target_greedy(target, drafter, k, policy) -> None:
    prompts = heldout(8)
    settings = SpecSettings(48, TOK.eos_id, k=k, k_policy=policy, pipelined=True)
    results = run(speculate(target, drafter, prompts, [settings]))
    used = 0
    for p, (res,) in zip(prompts, results, strict=True):
        assert res.tokens == generate(target, p, GREEDY, 48, TOK.eos_id)
        assert not res.degraded
        a = res.account
        assert a.pipelined_rounds <= a.ahead_rounds <= a.verify_rounds
        assert a.pipelined_rounds <= a.full_rounds  # only a fully kept round confirms a guess
        used += a.pipelined_rounds
    assert used > 0  # the path under test ran


@pytest.mark.parametrize("policy", ["fixed", "heuristic"])
def test_greedy_rounds_drafted_ahead_are_the_rounds_plain_speculation_sends(
    target, drafter, policy
) -> None:
    """Greedy drafts are a function of the committed prefix, so a round drafted ahead and used
    equals the round plain speculation drafts after the verdict: same rounds, same k, same
    acceptance. A cache left holding a wrong guess or dropped drafts would change them."""
    prompts = heldout(6, seed=11)
    plain = SpecSettings(48, TOK.eos_id, k=3, k_policy=policy)
    piped = SpecSettings(48, TOK.eos_id, k=3, k_policy=policy, pipelined=True)
    for a, b in run(speculate(target, drafter, prompts, [plain, piped])):
        assert b.tokens == a.tokens
        assert b.account.k_history == a.account.k_history
        assert b.account.accepted_tokens == a.account.accepted_tokens
        assert a.account.ahead_rounds == a.account.pipelined_rounds == 0  # off by default


def test_a_drafter_equal_to_the_target_always_guesses_the_bonus(target) -> None:
    settings = SpecSettings(16, None, k=3, k_policy="fixed", pipelined=True)
    [[res]] = run(speculate(target, target, heldout(1), [settings]))
    a = res.account
    assert a.verify_rounds == 4  # 16 tokens at 3 drafts + 1 bonus each
    # every round after the first was drafted ahead and sent as drafted; the last has no next
    assert (a.ahead_rounds, a.pipelined_rounds, a.wasted_draft_tokens) == (3, 3, 0)


@pytest.mark.parametrize("start", [False, True])
def test_a_revised_plan_turns_drafting_ahead_on_or_off_mid_request(target, drafter, start) -> None:
    """The coordinator's revised plan toggles pipelining on the same cloud: rounds are drafted
    ahead only while it is on, and the output is still the target's greedy output."""
    from edge_node.spec_types import Hooks, Replan
    from node_runtime.kinds import Mode

    p = heldout(1, seed=5)[0]
    ref = generate(target, p, GREEDY, 48, TOK.eos_id)

    async def main() -> tuple[SpecResult, list[int]]:
        node = await start_cloud(target, TOK.eos_id)
        clouds = CloudDirectory("edge-test", static=[node.address])
        asked: list[int] = []

        async def replan(left: int, current: str) -> Replan | None:
            asked.append(left)
            return Replan(Mode.SPECULATION, (current, clouds.stub(current)), 3, not start)

        settings = SpecSettings(48, TOK.eos_id, k=3, k_policy="fixed", pipelined=start)
        hooks = Hooks(replan=replan, replan_every=3)
        try:
            return await Speculator(drafter).run(p, GREEDY, settings, clouds.pick, hooks), asked
        finally:
            await clouds.close()
            await node.stop()

    res, asked = run(main())
    a = res.account
    assert res.tokens == ref
    assert asked and a.plan_revisions == 1  # toggled once; later plans agree with it
    assert a.verify_rounds > 3
    if start:  # on for the first three rounds only, each drafting the next one ahead
        assert 0 < a.ahead_rounds <= 3 < a.verify_rounds
    else:  # off for the first three rounds, then on for the rest
        assert 0 < a.ahead_rounds <= a.verify_rounds - 3


def test_sampled_pipelined_rounds_carry_their_q_and_reproduce_from_the_seed(target) -> None:
    """Drafter = target at temperature 2: every draft is kept and the bonus is a sample, so
    some guesses are right and some wrong; the rounds sent as drafted ahead need their q rows
    (a round without them is refused by the cloud, and the request would fail over)."""
    settings = SpecSettings(40, None, k=2, k_policy="fixed", pipelined=True)
    params = SamplingParams(2.0, 1.0, 5)
    prompts = heldout(3, seed=12)
    first = run(speculate(target, target, prompts, [settings, settings], params))
    again = run(speculate(target, target, prompts, [settings], params))
    hits = misses = 0
    for (x, y), (z,) in zip(first, again, strict=True):
        assert not x.degraded and len(x.tokens) == 40
        assert x.tokens == y.tokens == z.tokens  # the same seed, the same output
        assert x.account.accepted_tokens == x.account.drafted_tokens
        hits += x.account.pipelined_rounds
        misses += x.account.ahead_rounds - x.account.pipelined_rounds
    assert hits > 0 and misses > 0


class LateSpeculator(Speculator):
    """Starts every drafter call late, so the verdicts arrive before drafting ahead begins."""

    async def compute(self, fn: Callable[[], T]) -> T:
        await asyncio.sleep(0.02)
        return await super().compute(fn)


def test_sampled_output_does_not_depend_on_when_the_verdict_arrives(target, drafter) -> None:
    """How far a dropped round got depends on timing; it must not move any later draw, or a
    seed would no longer give one output. Once every verdict comes after drafting ahead is
    done (a cloud that waits 20 ms to fill a batch), once before it starts."""
    settings = SpecSettings(32, None, k=2, k_policy="fixed", pipelined=True)
    params = SamplingParams(2.5, 1.0, 3)
    prompts = heldout(3, seed=13)

    async def main(cls: type[Speculator], wait_ms: float) -> list[SpecResult]:
        config = CloudConfig(engine=EngineConfig(max_wait_ms=wait_ms))
        node = await start_cloud(target, TOK.eos_id, config)
        clouds = CloudDirectory("edge-test", static=[node.address])
        try:
            return [await cls(drafter).run(p, params, settings, clouds.pick) for p in prompts]
        finally:
            await clouds.close()
            await node.stop()

    early, late = run(main(Speculator, 20.0)), run(main(LateSpeculator, 0.0))
    for a, b in zip(early, late, strict=True):
        assert a.tokens == b.tokens
    # rounds drafted ahead were dropped after drafting (early) and before it (late)
    assert sum(r.account.wasted_draft_tokens for r in early) > 0
    assert sum(r.account.ahead_rounds - r.account.pipelined_rounds for r in late) > 0


def test_losing_the_cloud_mid_flight_leaves_the_drafter_consistent(target, drafter) -> None:
    """The first cloud stops while rounds are in flight and drafted ahead; the request moves
    to the second cloud and still gives the target's output."""

    async def main() -> tuple[SpecResult, str]:
        a = await start_cloud(target, TOK.eos_id)
        b = await start_cloud(target, TOK.eos_id)
        clouds = CloudDirectory("edge-test", static=[a.address, b.address])

        async def stop_a() -> None:
            while a.engine.stats.rounds < 3:
                await asyncio.sleep(0.001)
            await a.stop(grace=0)

        stopper = asyncio.create_task(stop_a())
        try:
            settings = SpecSettings(60, TOK.eos_id, k=2, k_policy="fixed", pipelined=True)
            res = await Speculator(drafter).run(heldout(1)[0], GREEDY, settings, clouds.pick)
            await stopper
            return res, b.address
        finally:
            await clouds.close()
            await b.stop()

    res, second = run(main())
    assert res.tokens == generate(target, heldout(1)[0], GREEDY, 60, TOK.eos_id)
    assert res.cloud_node == second and not res.degraded


def test_the_edge_service_passes_the_flag_and_reports_the_overlap() -> None:
    async def main() -> list[pb.SolveReply]:
        target, drafter = load_torch("target"), load_torch("drafter")
        cloud = await start_cloud(target, TOK.eos_id)
        edge = await start_edge(drafter, TOK, EdgeNodeConfig(clouds=(cloud.address,)))
        question = task.generate(1, task.HELDOUT_SEED)[0].question
        try:
            async with aio_channel(edge.address) as ch:
                stub = pb_grpc.EdgeStub(ch)
                return [
                    await stub.Solve(
                        pb.SolveRequest(
                            prompt=question,
                            mode=pb.MODE_TOKEN_SPECULATION,
                            max_new_tokens=48,
                            pipelined=piped,
                        ),
                        timeout=60,
                    )
                    for piped in (False, True)
                ]
        finally:
            await edge.stop()
            await cloud.stop()

    plain, piped = run(main())
    assert piped.text == plain.text
    assert plain.account.ahead_rounds == 0
    a = piped.account
    assert 0 < a.pipelined_rounds <= a.ahead_rounds <= a.verify_rounds


# ---------------------------------------------------------------- the drafter, without a network


class TableLM:
    """A CausalLM whose next-token logits depend on the last token only (cheap enough for 20k
    runs); its sessions show the tokens they hold."""

    def __init__(
        self, vocab: int, seed: int, scale: float, like: TableLM | None = None, max_len: int = 64
    ) -> None:
        self.name, self.vocab_size, self.max_len = "table", vocab, max_len
        # ``like``: a noisy copy of that model's table, as a drafter approximates its target
        self.table = np.random.default_rng(seed).normal(0, scale, (vocab, vocab))
        if like is not None:
            self.table += like.table

    def session(self) -> TableSession:
        return TableSession(self)

    def extend_batch(self, sessions: Sequence[Any], tokens: Sequence[Sequence[int]]) -> list:
        return [s.extend(t) for s, t in zip(sessions, tokens, strict=True)]


class TableSession:
    def __init__(self, lm: TableLM) -> None:
        self.lm, self.tokens = lm, []

    @property
    def length(self) -> int:
        return len(self.tokens)

    def extend(self, tokens: Sequence[int]) -> np.ndarray:
        self.tokens += list(tokens)
        return self.lm.table[list(tokens)]

    def truncate(self, length: int) -> None:
        del self.tokens[length:]


def pipelined_run(
    target: TableLM,
    d: Drafter,
    params: SamplingParams,
    k: int,
    rng: np.random.Generator,
    n: int,
    verdict_first: bool,
    commit_guess: bool = False,
) -> tuple[list[int], int]:
    """``n`` tokens after [0] by pipelined rounds, as ``Speculator._session`` runs them: the
    next round drafted after the drafts and the guess, used only when the verdict confirms the
    guess. ``verdict_first``: the verdict is known before drafting ahead starts (the early stop
    path). ``commit_guess`` is a wrong pipeline that takes the guess for the bonus token.
    Returns the tokens and how many rounds were sent as drafted ahead."""
    seq, ready, used = [0], None, 0
    while len(seq) < n + 1:
        draft = ready or d.propose(seq, k)
        used += ready is not None
        tokens = draft.proposal.tokens.tolist()
        rows = np.stack([target.table[[*seq, *tokens[:i]][-1]] for i in range(len(tokens) + 1)])
        v = verify(draft.proposal, rows, params, rng)  # the cloud's own generator
        signal = AheadSignal()
        if verdict_first:
            signal.settle(v.accepted == len(tokens), v.next_token)
        ahead = d.draft_ahead(seq, tokens, k, (), signal)
        if commit_guess and v.accepted == len(tokens) and ahead.draft is not None:
            seq += [*tokens, ahead.guess]
            ready = ahead.draft
            continue
        seq += [*tokens[: v.accepted], v.next_token]
        ready = d.settle(ahead, v.accepted, v.next_token)
        cached = d.session.tokens  # the cache holds committed tokens, then the next drafts
        held = seq + ready.proposal.tokens.tolist()[:-1] if ready else seq[: len(cached)]
        assert cached == held
    return seq[1 : n + 1], used


CLOUD_SEED = 123
VOCAB = 4  # small, so the joint of k + 2 tokens has few enough cells for 20k runs


def joint(target: TableLM, params: SamplingParams, n: int) -> np.ndarray:
    """The target's probability of every sequence of ``n`` tokens after [0], flattened."""
    v = target.vocab_size
    p = np.stack([probs(target.table[t], params) for t in range(v)])  # [last, next]
    out = p[0]  # [sequences so far], row-major: a sequence's last token is its index mod v
    for _ in range(n - 1):
        out = (out[:, None] * p[np.arange(len(out)) % v]).ravel()
    return out


def pipelined_pvalue(
    params: SamplingParams, k: int, runs: int, commit_guess: bool = False
) -> tuple[float, int]:
    """The chi-square p-value of the first k + 2 tokens of pipelined runs against the target's
    joint (so that rounds drafted ahead decide some of them), and the rounds they used."""
    target = TableLM(VOCAB, 0, 1.5)
    drafter_lm = TableLM(VOCAB, 1, 0.7, like=target)
    cloud, n = np.random.default_rng(CLOUD_SEED), k + 2
    counts, used = np.zeros(VOCAB**n), 0
    for i in range(runs):
        d = Drafter(drafter_lm, replace(params, seed=i))  # each run draws its own drafts
        out, u = pipelined_run(target, d, params, k, cloud, n, i % 2 == 1, commit_guess)
        counts[np.ravel_multi_index(out, (VOCAB,) * n)] += 1
        used += u
    expected = joint(target, params, n) * runs
    assert counts[expected == 0].sum() == 0, "a sequence the target never emits was emitted"
    small = (expected > 0) & (expected < 5)  # pooled, so the chi-square approximation holds
    big = expected >= 5
    pooled = [[counts[small].sum()], [expected[small].sum()]] if small.any() else [[], []]
    obs = np.append(counts[big], pooled[0])
    exp = np.append(expected[big], pooled[1])
    return float(chisquare(obs, exp).pvalue), used


@pytest.mark.parametrize(
    ("params", "k"),
    [(SamplingParams(1.0), 1), (SamplingParams(1.0), 2), (SamplingParams(0.7, top_p=0.8), 2)],
)
def test_sampled_pipelined_rounds_keep_the_targets_joint(params: SamplingParams, k: int) -> None:
    pvalue, used = pipelined_pvalue(params, k, 20_000)
    assert used > 2_000  # rounds drafted ahead decided many of the sequences
    assert pvalue > ALPHA


def test_the_check_has_power_against_taking_the_guess_for_the_bonus() -> None:
    pvalue, _ = pipelined_pvalue(SamplingParams(1.0), 1, 5_000, commit_guess=True)
    assert pvalue < ALPHA


def test_drafting_ahead_stops_early_once_the_verdict_shows_it_wasted() -> None:
    """PipeInfer's early cancellation: a verdict that arrives mid-draft stops drafting at the
    next token, and the cache is rolled back to what the verdict kept."""
    lm = TableLM(6, 1, 1.5)
    d = Drafter(lm, GREEDY)
    committed = [0, 1, 2]
    drafts = d.propose(committed, 2).proposal.tokens.tolist()
    signal = AheadSignal()
    fed = threading.Event()

    class Tripwire(TableSession):
        def extend(self, tokens: Sequence[int]) -> np.ndarray:
            if self.length >= len(committed) + len(drafts) + 2:  # guess and one draft fed
                if not fed.is_set():
                    fed.set()
                    signal.settle(False, -1)  # the verdict: a draft was rejected
            return super().extend(tokens)

    tripwire = Tripwire(lm)
    tripwire.tokens = list(d.session.tokens)
    d.session = tripwire
    ahead = d.draft_ahead(committed, drafts, 8, (), signal)
    assert ahead.guess >= 0 and ahead.draft is None  # stopped, not 8 drafts
    assert d.session.length <= len(committed) + len(drafts) + 3
    assert d.settle(ahead, 1, 5) is None
    assert d.session.tokens == committed + drafts[:1]
    # a verdict known before drafting ahead starts: nothing is fed at all
    known = AheadSignal()
    known.settle(False, -1)
    before = list(d.session.tokens)
    assert d.draft_ahead(committed + drafts[:1] + [5], [3], 4, (), known).drafted == 0
    assert d.session.tokens == before
