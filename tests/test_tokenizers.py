"""Token ids cross the wire only between nodes that share a tokenizer.

Before: nothing checked it. A drafter and a target of different families made `tandem demo` fail
after minutes with UNKNOWN "token id ... outside the vocabulary", even in cloud-only mode.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import grpc
import pytest
from test_reasoning_grpc import RespelledTokenizer, respelled_drafter  # a re-indexed drafter

from cloud_node.node import start_cloud
from coordinator.costmodel import CloudView, EdgeView, Request, candidates
from coordinator.service import serve
from edge_node.node import EdgeNodeConfig, start_edge
from models import task
from models.fingerprint import fingerprint, vocabulary
from models.torch_backend import load_torch
from node_runtime.kinds import Mode
from node_runtime.serving import aio_channel
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

WORDS = fingerprint(task.WordTokenizer())


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


def hf_tokenizer(words: list[str]) -> Any:
    """A transformers tokenizer over ``words`` (ids in list order), wrapped as the backend does."""
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    from models.hf_backend import HFTokenizer

    table = {w: i for i, w in enumerate(words)}
    raw = tokenizers.Tokenizer(tokenizers.models.WordLevel(table, unk_token="<unk>"))
    raw.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=raw, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    return HFTokenizer(fast)


# ---------------------------------------------------------------- the fingerprint


def test_the_fingerprint_is_stable_and_names_the_vocabulary_size() -> None:
    tok = task.WordTokenizer()
    assert fingerprint(tok) == fingerprint(task.WordTokenizer()) == WORDS
    size, digest = WORDS.split("-")
    assert int(size) == tok.vocab_size and len(digest) == 16
    assert vocabulary(tok) == tok.vocab


def test_tokenizers_whose_ids_mean_other_things_differ() -> None:
    tok = task.WordTokenizer()
    moved = task.WordTokenizer()
    moved.vocab = [*moved.vocab[1:], moved.vocab[0]]  # same words, other ids
    assert fingerprint(moved) != WORDS
    other_eos = task.WordTokenizer()
    other_eos.eos_id = tok.pad_id  # same table, another end of sequence
    assert fingerprint(other_eos) != WORDS


def test_transformers_tokenizers_are_fingerprinted_from_their_table() -> None:
    words = ["<unk>", "<s>", "</s>", "the", "sky", "is", "blue"]
    a, b = hf_tokenizer(words), hf_tokenizer(words)
    assert vocabulary(a) == words
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(a).startswith("7-")
    swapped = hf_tokenizer(["<unk>", "<s>", "</s>", "sky", "the", "is", "blue"])
    assert fingerprint(swapped) != fingerprint(a) and fingerprint(a) != WORDS


# ---------------------------------------------------------------- pairing in the cost model


def test_speculation_is_planned_only_on_clouds_that_share_the_edges_tokenizer() -> None:
    edge = EdgeView("e1", rtt_ms={"same": 1.0, "other": 1.0}, tokenizer="A")
    same = CloudView("same", model="t", tokenizer="A")
    other = CloudView("other", model="t", tokenizer="B")
    preds = candidates(edge, [same, other], Request(40))
    on = {(p.mode, p.cloud_id) for p in preds}
    assert (Mode.SPECULATION, "same") in on and (Mode.CLOUD_ONLY, "other") in on
    assert (Mode.SPECULATION, "other") not in on  # text modes only across tokenizers


# ---------------------------------------------------------------- the coordinator over gRPC


def _node(node_id: str, role: int, port: int, tokenizer: str) -> pb.NodeInfo:
    return pb.NodeInfo(
        node_id=node_id,
        role=role,
        address=f"127.0.0.1:{port}",
        models=[pb.ModelInfo(name="target")],
        tokenizer=tokenizer,
    )


def test_the_coordinator_pairs_only_matching_tokenizers_and_names_both_when_none_match() -> None:
    async def main() -> tuple[pb.PlanReply, grpc.aio.AioRpcError, pb.NodeInfo, pb.NodeInfo]:
        coord, address = await serve()
        try:
            async with aio_channel(address) as ch:
                stub = pb_grpc.CoordinatorStub(ch)
                for node in (
                    _node("edge-a", pb.ROLE_EDGE, 7001, "A"),
                    _node("cloud-b", pb.ROLE_CLOUD, 7002, "B"),
                ):
                    await stub.Register(pb.RegisterRequest(node=node), timeout=5)
                plan = await stub.Plan(pb.PlanRequest(edge_id="edge-a"), timeout=5)
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.PickCloud(
                        pb.PickCloudRequest(edge_id="edge-a", tokenizer="A"), timeout=5
                    )
                any_cloud = await stub.PickCloud(pb.PickCloudRequest(edge_id="edge-a"), timeout=5)
                node = _node("cloud-a", pb.ROLE_CLOUD, 7003, "A")
                await stub.Register(pb.RegisterRequest(node=node), timeout=5)
                same = await stub.PickCloud(
                    pb.PickCloudRequest(edge_id="edge-a", tokenizer="A"), timeout=5
                )
                preferred = await stub.PickCloud(pb.PickCloudRequest(edge_id="edge-a"), timeout=5)
                assert preferred.cloud.node_id == "cloud-a"  # the edge's own tokenizer first
                return plan, err.value, any_cloud.cloud, same.cloud
        finally:
            await coord.stop(0)

    plan, err, any_cloud, same = run(main())
    assert plan.mode == pb.MODE_CLOUD_ONLY and plan.cloud.node_id == "cloud-b"
    assert {c.mode for c in plan.candidates} == {pb.MODE_CLOUD_ONLY}
    assert plan.cloud.tokenizer == "B"  # the edge learns what the cloud speaks
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "A" in err.details() and "cloud-b has B" in err.details()
    assert any_cloud.node_id == "cloud-b"  # text work may go anywhere
    assert same.node_id == "cloud-a"


# ---------------------------------------------------------------- the cloud's own check


def test_a_cloud_refuses_a_session_from_another_tokenizer_at_once_naming_both() -> None:
    async def main() -> grpc.aio.AioRpcError:
        tok = task.WordTokenizer()
        cloud = await start_cloud(load_torch("target"), tok.eos_id, tokenizer=tok)
        try:
            async with aio_channel(cloud.address) as ch:
                call = pb_grpc.CloudStub(ch).Speculate(timeout=10)
                opening = pb.OpenSession(session_id="s1", prompt=[49000], tokenizer="49152-x")
                await call.write(pb.SpecRequest(open=opening))
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call.read()
                return err.value
        finally:
            await cloud.stop()

    err = run(main())
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "49152-x" in err.details() and WORDS in err.details()


def test_cloud_only_carries_text_to_a_cloud_of_another_tokenizer() -> None:
    problem = task.generate(1, task.HELDOUT_SEED)[0]

    async def main() -> tuple[pb.GenerateReply, pb.GenerateReply]:
        tok = task.WordTokenizer()
        target = load_torch("target")
        cloud = await start_cloud(target, tok.eos_id, tokenizer=tok)
        try:
            async with aio_channel(cloud.address) as ch:
                stub = pb_grpc.CloudStub(ch)
                ids = [tok.bos_id, *tok.encode(problem.question)]
                by_ids = await stub.Generate(
                    pb.GenerateRequest(prompt=ids, max_new_tokens=48, tokenizer=WORDS), timeout=30
                )
                # an edge of another tokenizer: its ids would be garbage here, its text is not
                foreign = [49000, 49001]
                by_text = await stub.Generate(
                    pb.GenerateRequest(
                        prompt=foreign,
                        prompt_text=problem.question,
                        max_new_tokens=48,
                        tokenizer="49152-0123456789abcdef",
                    ),
                    timeout=30,
                )
                return by_ids, by_text
        finally:
            await cloud.stop()

    by_ids, by_text = run(main())
    assert list(by_text.tokens) == list(by_ids.tokens)
    assert by_text.text == by_ids.text and task.is_correct(problem, by_text.text)
    assert by_text.ended and by_text.tokenizer == WORDS


# ---------------------------------------------------------------- an edge and a cloud that differ


def test_an_edge_of_another_tokenizer_speculates_greedily_as_text_and_sampled_is_refused() -> None:
    """Greedy speculation: drafts travel as text; sampled speculation: FAILED_PRECONDITION at
    once, naming both tokenizers; cloud-only: the text travels."""
    edge_tok = RespelledTokenizer()
    problem = task.generate(1, task.HELDOUT_SEED + 3)[0]

    async def main() -> tuple[pb.SolveReply, grpc.aio.AioRpcError, pb.SolveReply]:
        tok = task.WordTokenizer()
        cloud = await start_cloud(load_torch("target"), tok.eos_id, tokenizer=tok)
        edge = await start_edge(
            respelled_drafter(edge_tok), edge_tok, EdgeNodeConfig(clouds=(cloud.address,))
        )
        try:
            async with aio_channel(edge.address) as ch:
                stub = pb_grpc.EdgeStub(ch)
                ask = pb.SolveRequest(prompt=problem.question, max_new_tokens=48)
                ask.mode = pb.MODE_TOKEN_SPECULATION
                greedy = await stub.Solve(ask, timeout=30)
                ask.sampling.temperature = 0.8
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.Solve(ask, timeout=30)
                ask.mode = pb.MODE_CLOUD_ONLY
                reply = await stub.Solve(ask, timeout=30)
                return greedy, err.value, reply
        finally:
            await edge.stop()
            await cloud.stop()

    greedy, err, reply = run(main())
    assert greedy.mode == pb.MODE_TOKEN_SPECULATION and not greedy.degraded
    assert task.is_correct(problem, greedy.text)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert fingerprint(edge_tok) in err.details() and WORDS in err.details()
    assert reply.mode == pb.MODE_CLOUD_ONLY and not reply.degraded


# ---------------------------------------------------------------- the demo with real checkpoints


def test_the_demo_asks_real_checkpoints_real_questions_and_pairs_tokenizers() -> None:
    from tandem.demo import TEXT_PROMPTS, DemoConfig, _tokenizer_note

    assert DemoConfig().bundled
    # before: a real drafter under the bundled target was asked the synthetic task's questions
    assert not DemoConfig(drafter="hf:/models/smollm2.gguf").bundled
    assert not DemoConfig(target="hf:/models/qwen", drafter="hf:/models/smollm2.gguf").bundled
    assert not any(p.startswith("Q ") for p in TEXT_PROMPTS)  # not the task's question form
    edge = pb.NodeInfo(role=pb.ROLE_EDGE, tokenizer="49152-aaaa")
    same = pb.NodeInfo(role=pb.ROLE_CLOUD, tokenizer="49152-aaaa")
    other = pb.NodeInfo(role=pb.ROLE_CLOUD, tokenizer="151936-bbbb")
    assert _tokenizer_note([edge, same]) is None
    note = _tokenizer_note([edge, other])
    assert note is not None and "49152-aaaa" in note and "151936-bbbb" in note
