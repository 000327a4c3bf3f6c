"""Token speculation ends where the reply ends: drafts stop at EOS and stop ids, the stream is the
reply, and sampled drafts carry an exactly sparse q of bounded size. Trained bundled models."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import grpc
import numpy as np
import pytest

from cloud_node.node import start_cloud
from cloud_node.service import round_from_wire
from edge_node import speculation
from edge_node.drafter import MAX_SUPPORT, Drafter, DraftResult
from edge_node.speculation import (
    SpecResult,
    SpecSettings,
    Speculator,
    draft_wire_bytes,
    max_draft_in_message,
    proposal_to_wire,
)
from models.base import CausalLM
from models.generate import generate
from models.sampling import SamplingParams
from models.speculative import Proposal
from models.task import STEP_DELIMITER, WordTokenizer
from models.task import generate as make_problems
from node_runtime.kinds import Mode
from node_runtime.serving import aio_channel, bind
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

TOK = WordTokenizer()
GREEDY = SamplingParams()


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 120))


def prompt_of(text: str) -> list[int]:
    return [TOK.bos_id, *TOK.encode(text)]


class RecordingDrafter(Drafter):
    """The edge's drafter, keeping every proposal it made."""

    proposals: list[list[int]] = []

    def propose(self, committed: Sequence[int], k: int, stop_ids: Any = ()) -> DraftResult:
        out = super().propose(committed, k, stop_ids)
        RecordingDrafter.proposals.append(out.proposal.tokens.tolist())
        return out


async def speculate(
    target: CausalLM,
    drafter: CausalLM,
    prompts: list[list[int]],
    settings: SpecSettings,
    params: SamplingParams = GREEDY,
) -> list[tuple[SpecResult, list[int]]]:
    """Each prompt through a real cloud node; each result with the tokens its stream got."""
    node = await start_cloud(target, TOK.eos_id)
    channel = aio_channel(node.address)
    stub = pb_grpc.CloudStub(channel)

    async def pick(tried: Sequence[str]) -> tuple[str, pb_grpc.CloudStub] | None:
        return None if node.address in tried else (node.address, stub)

    out = []
    try:
        for p in prompts:
            streamed: list[int] = []
            hooks = speculation.Hooks(on_tokens=streamed.extend)
            res = await Speculator(drafter).run(p, params, settings, pick, hooks)
            out.append((res, streamed))
    finally:
        await channel.close()
        await node.stop()
    return out


def test_the_drafter_stops_at_eos(drafter) -> None:
    question = prompt_of(make_problems(1, seed=41)[0].question)
    reply = generate(drafter, question, SamplingParams(), 60, TOK.eos_id)
    assert reply[-1] == TOK.eos_id
    committed = question + reply[:-3]  # three tokens before the drafter closes its sequence
    d = Drafter(drafter, SamplingParams())
    tokens = d.propose(committed, 8, {TOK.eos_id}).proposal.tokens.tolist()
    assert tokens == reply[-3:]
    # the cache holds what was fed: the sequence and every draft but the last
    assert d.session.length == len(committed) + len(tokens) - 1


def test_no_round_drafts_past_eos_and_acceptance_counts_real_drafts(
    target, drafter, monkeypatch
) -> None:
    monkeypatch.setattr(speculation, "Drafter", RecordingDrafter)
    RecordingDrafter.proposals = []
    prompts = [prompt_of(p.question) for p in make_problems(6, seed=41)]
    settings = SpecSettings(max_new=48, eos_id=TOK.eos_id, k=8, k_policy="fixed")
    results = run(speculate(target, drafter, prompts, settings))
    for p, (res, streamed) in zip(prompts, results, strict=True):
        assert res.tokens == generate(target, p, SamplingParams(), 48, TOK.eos_id)
        assert res.tokens[-1] == TOK.eos_id and streamed == res.tokens
    drafts = RecordingDrafter.proposals
    assert all(TOK.eos_id not in d[:-1] for d in drafts)
    assert any(d[-1] == TOK.eos_id and len(d) < 8 for d in drafts)
    assert sum(r.account.drafted_tokens for r, _ in results) == sum(map(len, drafts))


def test_a_stop_id_ends_token_speculation_at_the_delimiter(target, drafter) -> None:
    delim = TOK.encode(STEP_DELIMITER)[0]
    prompts = [prompt_of(p.question) for p in make_problems(5, seed=43)]
    settings = SpecSettings(12, TOK.eos_id, k=4, k_policy="heuristic", stop_ids=(delim,))
    for res, streamed in run(speculate(target, drafter, prompts, settings)):
        a = res.account
        assert res.tokens[-1] == delim and delim not in res.tokens[:-1]
        assert streamed == res.tokens
        # no round after the delimiter: the last round's token past it at the most was made
        assert a.accepted_tokens + a.verify_rounds <= len(res.tokens) + 1


@pytest.mark.parametrize(("max_new", "eos"), [(7, None), (48, TOK.eos_id)])
def test_the_stream_is_exactly_the_final_reply(target, max_new, eos) -> None:
    """The target drafting for itself: every draft is kept, so rounds end past max_new (7 = 5 +
    a round of 2 drafts and a bonus) and past EOS unless the edge cuts them."""
    prompts = [prompt_of(p.question) for p in make_problems(3, seed=47)]
    settings = SpecSettings(max_new=max_new, eos_id=eos, k=4, k_policy="fixed")
    for p, (res, streamed) in zip(
        prompts, run(speculate(target, target, prompts, settings)), strict=True
    ):
        assert streamed == res.tokens == generate(target, p, SamplingParams(), max_new, eos)
        assert not res.degraded and res.account.accepted_tokens == res.account.drafted_tokens


def test_sampled_speculation_streams_its_reply_and_stays_in_the_vocabulary(target, drafter) -> None:
    prompts = [prompt_of(p.question) for p in make_problems(3, seed=53)]
    settings = SpecSettings(max_new=30, eos_id=TOK.eos_id, k=5, k_policy="fixed")
    params = SamplingParams(1.0, 0.95, seed=3)
    for res, streamed in run(speculate(target, drafter, prompts, settings, params)):
        assert streamed == res.tokens and not res.degraded
        assert TOK.eos_id not in res.tokens[:-1] and len(res.tokens) <= 30


class WideLM:
    """Logits over a 49,152-token vocabulary (a real tokenizer's size): wire-size checks only."""

    name, vocab_size, max_len = "wide", 49_152, 4096

    def __init__(self) -> None:
        self.rng = np.random.default_rng(0)

    def session(self) -> Any:
        lm = self

        class Session:
            length = 0

            def extend(self, tokens: Sequence[int]) -> np.ndarray:
                self.length += len(tokens)
                return lm.rng.normal(0, 2, (len(tokens), lm.vocab_size)).astype(np.float32)

            def truncate(self, length: int) -> None:
                self.length = length

        return Session()


def test_sampled_drafts_travel_sparse_and_exact_within_a_bound() -> None:
    lm = WideLM()
    d = Drafter(lm, SamplingParams(1.0, seed=1))  # type: ignore[arg-type]
    proposal = d.propose([1, 2, 3], 16).proposal
    assert proposal.q is not None
    assert all(np.count_nonzero(row) == MAX_SUPPORT for row in proposal.q)
    msg = proposal_to_wire("s" * 32, 1, 3, proposal)
    # a dense float32 q would take 16 x 49,152 x 4 bytes = 3.1 MB
    assert msg.ByteSize() <= 200 + 16 * draft_wire_bytes(MAX_SUPPORT) < 40_000
    # the cloud rebuilds exactly the q the drafts were drawn from
    rebuilt = round_from_wire(msg.verify, lm.vocab_size, 16).proposal
    assert np.array_equal(rebuilt.tokens, proposal.tokens)
    assert np.array_equal(rebuilt.q, proposal.q)
    for token, row in zip(proposal.tokens, proposal.q, strict=True):
        assert row[token] > 0


def test_the_draft_length_is_capped_by_the_message_size() -> None:
    lm = WideLM()
    cap = 100_000
    k = max_draft_in_message(MAX_SUPPORT, cap)
    d = Drafter(lm, SamplingParams(1.0, seed=2))  # type: ignore[arg-type]
    proposal = d.propose([1, 2, 3], k).proposal
    # worst case ids: the largest of the vocabulary take the most varint bytes
    q = np.zeros_like(proposal.q)
    q[:, -MAX_SUPPORT:] = proposal.q[proposal.q > 0].reshape(k, MAX_SUPPORT)
    tokens = np.full(k, lm.vocab_size - 1)
    q[:, -1] = np.maximum(q[:, -1], 1e-3)
    worst = Proposal(tokens, q)
    assert proposal_to_wire("s" * 128, 2**63, 2**30, worst).ByteSize() <= cap
    assert max_draft_in_message() >= 16  # the default cap never limits the cloud's max_draft


class HostileCloud(pb_grpc.CloudServicer):
    """A cloud that opens sessions properly and then answers a verdict it has no right to."""

    def __init__(self, fault: Callable[[pb.VerifyRequest], dict[str, int]]) -> None:
        self.fault = fault
        self.rounds = 0

    async def Speculate(self, request_iterator: Any, context: Any) -> Any:  # noqa: N802
        async for req in request_iterator:
            kind = req.WhichOneof("kind")
            if kind == "open":
                o = req.open
                opened = pb.SessionOpened(session_id=o.session_id, position=len(o.prompt))
                yield pb.SpecReply(opened=opened)
            elif kind == "verify":
                v = req.verify
                self.rounds += 1
                fields = dict(
                    session_id=v.session_id,
                    round_id=v.round_id,
                    base_position=v.base_position,
                    accepted=0,
                    next_token=5,
                    position=v.base_position + 1,
                )
                fields.update(self.fault(v))
                yield pb.SpecReply(verdict=pb.VerifyReply(**fields))
            else:
                yield pb.SpecReply(closed=pb.SessionClosed(session_id=req.close.session_id))


FAULTS: dict[str, Callable[[pb.VerifyRequest], dict[str, int]]] = {
    "accepted=-3": lambda v: {"accepted": -3},
    "accepted=1000": lambda v: {"accepted": 1000, "position": v.base_position + 1001},
    "accepted=k+1": lambda v: {"accepted": len(v.draft) + 1},
    "next_token outside": lambda v: {"next_token": 10**6},
    "next_token negative": lambda v: {"next_token": -1},
    "base_position": lambda v: {"base_position": v.base_position - 1},
    "round_id": lambda v: {"round_id": v.round_id + 1},
    "position": lambda v: {"position": v.base_position + 7},
}


async def against_hostile(
    fault: Callable[[pb.VerifyRequest], dict[str, int]], good: CausalLM | None, drafter: CausalLM
) -> tuple[SpecResult, SpecResult, int]:
    """One request first offered a hostile cloud (then a real one, if ``good``), and the same
    request with no cloud at all."""
    hostile = HostileCloud(fault)
    server = grpc.aio.server()
    pb_grpc.add_CloudServicer_to_server(hostile, server)
    address = bind(server, "127.0.0.1", 0)
    await server.start()
    node = await start_cloud(good, TOK.eos_id) if good is not None else None
    addresses = [address] + ([node.address] if node is not None else [])
    channels = {a: aio_channel(a) for a in addresses}

    async def pick(tried: Sequence[str]) -> tuple[str, pb_grpc.CloudStub] | None:
        rest = [a for a in addresses if a not in tried]
        return (rest[0], pb_grpc.CloudStub(channels[rest[0]])) if rest else None

    async def none(_: Sequence[str]) -> None:
        return None

    p = prompt_of(make_problems(1, seed=59)[0].question)
    settings = SpecSettings(max_new=24, eos_id=TOK.eos_id, k=4, k_policy="fixed")
    try:
        res = await Speculator(drafter).run(p, GREEDY, settings, pick)
        alone = await Speculator(drafter).run(p, GREEDY, settings, none)
    finally:
        for ch in channels.values():
            await ch.close()
        if node is not None:
            await node.stop()
        await server.stop(0)
    return res, alone, hostile.rounds


@pytest.mark.parametrize("fault", FAULTS, ids=list(FAULTS))
def test_a_bad_verdict_counts_as_a_lost_cloud(drafter, fault) -> None:
    res, alone, rounds = run(against_hostile(FAULTS[fault], None, drafter))
    assert rounds == 1  # the first verdict was refused, and no round followed
    assert res.tokens == alone.tokens  # nothing the hostile cloud said was kept
    assert res.degraded and res.final_mode == Mode.EDGE_ONLY and "bad verdict" in res.note
    assert res.account.verify_rounds == 0 and res.account.accepted_tokens == 0


def test_after_a_bad_verdict_the_edge_fails_over_to_a_good_cloud(target, drafter) -> None:
    res, _, _ = run(against_hostile(FAULTS["accepted=1000"], target, drafter))
    p = prompt_of(make_problems(1, seed=59)[0].question)
    assert res.tokens == generate(target, p, GREEDY, 24, TOK.eos_id)
    assert not res.degraded and res.final_mode == Mode.SPECULATION
    assert res.cloud_node != "" and res.account.verify_rounds > 0
