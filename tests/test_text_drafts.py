"""Drafts as text over the verify stream: an edge of another tokenizer speculates for a cloud.

A real cloud node on 127.0.0.1 serves the trained target with the task's tokenizer; the edge
drafts with the trained drafter re-indexed to another vocabulary (``respelled_drafter``: other
ids, another fingerprint), so token ids cannot cross and only text does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import grpc
import pytest
from test_reasoning_grpc import RespelledTokenizer, respelled_drafter
from test_speculation_grpc import _stream

from cloud_node.node import start_cloud
from edge_node.clouds import CloudDirectory
from edge_node.spec_types import Account
from edge_node.speculation import SpecSettings, Speculator
from models import task
from models.fingerprint import fingerprint
from models.generate import generate
from models.sampling import SamplingParams
from models.uad import start_ids, text_after
from node_runtime.errors import Precondition
from tandem_wire.v1 import tandem_pb2 as pb


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 90))


@pytest.fixture(scope="module")
def respelled() -> tuple[RespelledTokenizer, Any]:
    rt = RespelledTokenizer()
    return rt, respelled_drafter(rt)


def test_greedy_text_drafts_give_the_targets_output(tok, target, respelled) -> None:
    rt, drafter = respelled
    assert fingerprint(rt) != fingerprint(tok)
    problems = task.generate(4, task.HELDOUT_SEED + 11)

    async def main() -> list[tuple[str, str, Any]]:
        node = await start_cloud(target, tok.eos_id, tokenizer=tok)
        clouds = CloudDirectory("edge-text", static=[node.address])
        spec = Speculator(drafter, tokenizer=rt)
        out = []
        try:
            for p in problems:
                settings = SpecSettings(max_new=40, eos_id=rt.eos_id, k=4)
                res = await spec.run(
                    [rt.bos_id, *rt.encode(p.question)], SamplingParams(0.0), settings, clouds.pick
                )
                assert not res.degraded, res.note
                ids = start_ids(tok, p.question)
                want = generate(target, ids, SamplingParams(0.0), 40, tok.eos_id)
                out.append((rt.decode(res.tokens), text_after(tok, ids, want), res.account))
        finally:
            await clouds.close()
            await node.stop()
        return out

    accepted = drafted = 0
    for got, want, acc in run(main()):
        assert got.split() == want.split()  # the target's greedy reply, word for word
        assert 0 < acc.verify_rounds < len(want.split())  # drafts were kept: fewer passes
        accepted, drafted = accepted + acc.accepted_tokens, drafted + acc.drafted_tokens
    assert drafted > 0 and accepted / drafted >= 0.5


def _open(sid: str, text: str, temperature: float = 0.0) -> pb.SpecRequest:
    return pb.SpecRequest(
        open=pb.OpenSession(
            session_id=sid,
            sampling=pb.Sampling(temperature=temperature),
            tokenizer="another-tokenizer",
            text_drafts=True,
            prompt_text=text,
        )
    )


def _verify(sid: str, rid: int, base: int, text: str = "", ids: tuple[int, ...] = ()) -> Any:
    v = pb.VerifyRequest(session_id=sid, round_id=rid, base_position=base, draft_text=text)
    v.draft.extend(ids)
    return pb.SpecRequest(verify=v)


def test_the_wire_contract_of_a_text_session(tok, target) -> None:
    p = task.generate(1, task.HELDOUT_SEED + 12)[0]
    ids = start_ids(tok, p.question)
    want = generate(target, ids, SamplingParams(0.0), 3, tok.eos_id)
    first = tok.decode(want[:1])

    async def main() -> list[pb.SpecReply]:
        node = await start_cloud(target, tok.eos_id, tokenizer=tok)
        try:
            return await _stream(
                node.address,
                [
                    _open("t", p.question),
                    _verify("t", 1, len(ids), " " + first),  # the right word: kept
                    _verify("t", 1, len(ids), " " + first),  # a retry: answered again
                    _verify("t", 2, len(ids) + 2, " zebra unicorn"),  # no tokens: one decoded
                ],
            )
        finally:
            await node.stop()

    opened, r1, again, r2 = run(main())
    assert opened.opened.text_drafts and opened.opened.position == len(ids)
    assert (r1.verdict.drafted, r1.verdict.accepted, r1.verdict.position) == (1, 1, len(ids) + 2)
    assert r1.verdict.text.split() == tok.decode(want[:2]).split()
    assert again.verdict == r1.verdict  # idempotent on the round id
    assert (r2.verdict.drafted, r2.verdict.accepted) == (0, 0)
    assert r2.verdict.text.split() == tok.decode(want[:3]).split()


@pytest.mark.parametrize(
    ("messages", "code", "words"),
    [
        ([_open("s", "Q 1 + 2 ?", temperature=0.8)], "FAILED_PRECONDITION", "greedily only"),
        ([_open("s", "")], "INVALID_ARGUMENT", "prompt_text"),
        (
            [_open("s", "Q 1 + 2 ?"), _verify("s", 1, 6, ids=(5,))],
            "INVALID_ARGUMENT",
            "not draft ids",
        ),
        (
            [_open("s", "Q 1 + 2 ?"), _verify("s", 1, 6, "x" * 5000)],
            "INVALID_ARGUMENT",
            "5000 characters",
        ),
        ([_open("s", "Q 1 + 2 ?"), _verify("s", 1, 99, " A")], "INVALID_ARGUMENT", "99"),
    ],
)
def test_bad_text_sessions_get_a_clear_status(tok, target, messages, code, words) -> None:
    async def main() -> grpc.aio.AioRpcError:
        node = await start_cloud(target, tok.eos_id, tokenizer=tok)
        try:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await _stream(node.address, messages)
            return info.value
        finally:
            await node.stop()

    err = run(main())
    assert err.code().name == code and words in (err.details() or "")


def test_a_sampled_request_to_a_cloud_of_another_tokenizer_is_refused(
    tok, target, respelled
) -> None:
    rt, drafter = respelled

    async def main() -> None:
        node = await start_cloud(target, tok.eos_id, tokenizer=tok)
        clouds = CloudDirectory("edge-text", static=[node.address])
        try:
            settings = SpecSettings(max_new=10, eos_id=rt.eos_id, k=4)
            prompt = [rt.bos_id, *rt.encode("Q 1 + 2 ?")]
            await Speculator(drafter, tokenizer=rt).run(
                prompt, SamplingParams(0.8, seed=1), settings, clouds.pick
            )
        finally:
            await clouds.close()
            await node.stop()

    with pytest.raises(Precondition, match="greedy"):
        run(main())


def test_text_drafts_make_speculation_plannable_across_tokenizers() -> None:
    from coordinator.costmodel import CloudView, EdgeView, Request, candidates
    from node_runtime.kinds import Mode

    edge = EdgeView("e", tokenizer="edge-tok")
    cloud = CloudView("c", target_ms_per_token=60.0, tokenizer="cloud-tok")

    def modes(r: Request) -> set[Mode]:
        return {p.mode for p in candidates(edge, [cloud], r)}

    assert Mode.SPECULATION not in modes(Request(64))  # token ids cannot cross
    assert Mode.SPECULATION in modes(Request(64, text_drafts=True))  # greedy text drafts can


class LongestMatch:
    """A greedy longest-match tokenizer over "aaa", "a" and "b": "aa" is two tokens, "aaa" one,
    so a token already streamed can merge with what follows (ids 3 and 4: BOS and EOS)."""

    vocab = ["aaa", "a", "b"]
    bos_id, eos_id, vocab_size = 3, 4, 5

    def encode(self, text: str) -> list[int]:
        out, i = [], 0
        while i < len(text):
            w = next(w for w in self.vocab if text.startswith(w, i))
            out.append(self.vocab.index(w))
            i += len(w)
        return out

    def decode(self, ids: list[int]) -> str:
        return "".join(self.vocab[i] for i in ids if i < 3)


def test_a_reply_that_retokenizes_differently_is_replaced_and_still_generated_to_the_end(
    drafter,
) -> None:
    from edge_node.text_drafts import TextSession

    tok = LongestMatch()
    texts = ["a", "aa", "aaa", "aaab"]  # the cloud's text after each round; the last ends it

    class Req:
        committed = [tok.bos_id]
        settings = SpecSettings(max_new=10, eos_id=None)
        acc = Account()
        stopped = False

        def commit(self, tokens: list[int]) -> None:
            self.committed.extend(tokens)

        def left(self) -> int:
            return self.settings.max_new - (len(self.committed) - 1)

    async def exchange(msg: pb.SpecRequest) -> pb.SpecReply:
        v = msg.verify
        i = v.round_id - 1
        return pb.SpecReply(
            verdict=pb.VerifyReply(
                session_id=v.session_id,
                round_id=v.round_id,
                base_position=v.base_position,
                position=v.base_position + 1,
                text=texts[i],
                ended=i == len(texts) - 1,
            )
        )

    async def compute(fn: Any) -> Any:
        return fn()

    r = Req()
    run(TextSession(drafter, tok, compute, exchange).run(r, "s", 1, 0))  # type: ignore[arg-type]
    assert r.committed == [tok.bos_id, *tok.encode("aaab")]  # the final text, not "a a a b"
    assert r.acc.verify_rounds == len(texts)  # streaming diverged at "aaa"; generation went on
