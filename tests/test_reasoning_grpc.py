"""Step speculation and PRM search across real edge and cloud gRPC servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from dataclasses import replace
from typing import Any

import grpc
import numpy as np
import pytest
import torch

from cloud_node.node import start_cloud
from edge_node.node import EdgeNodeConfig, start_edge
from models import task
from models.reasoning.proposer import LMStepProposer
from models.torch_backend import TorchLM, load_module, load_torch
from models.transformer import TinyLM
from node_runtime.serving import aio_channel
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 120))


async def _reason(
    requests: list[pb.ReasonRequest], peers: int = 0, drafter: tuple[Any, Any] | None = None
) -> list[Any]:
    """Replies (or errors), the cloud's step counters and the edges' rejection counts.

    ``drafter``: the edges' (model, tokenizer); the bundled drafter by default.
    """
    tok = task.WordTokenizer()
    cloud = await start_cloud(load_torch("target"), tok.eos_id, tokenizer=tok)
    lm, edge_tok = drafter or (load_torch("drafter"), tok)
    edges = [
        await start_edge(lm, edge_tok, EdgeNodeConfig(clouds=(cloud.address,)))
        for _ in range(1 + peers)
    ]
    edges[0].servicer.clouds.peer_edges = [e.address for e in edges[1:]]
    out: list[Any] = []
    try:
        async with aio_channel(edges[0].address) as ch:
            stub = pb_grpc.EdgeStub(ch)
            for r in requests:
                try:
                    out.append(await stub.Reason(r, timeout=60))
                except grpc.aio.AioRpcError as exc:
                    out.append(exc)
        out.append({k: v for k, v in cloud.servicer.steps.counts.items()})
        out.append([e.servicer.counts["rejected"] for e in edges])
    finally:
        for e in edges:
            await e.stop()
        await cloud.stop()
    return out


def test_step_speculation_keeps_good_drafts_and_has_the_cloud_write_the_rest() -> None:
    problems = task.generate(8, task.HELDOUT_SEED)
    reqs = [
        pb.ReasonRequest(question=p.question, strategy="specreason", threshold=0.5)
        for p in problems
    ]
    *replies, counts, _ = run(_reason(reqs))
    correct = sum(task.is_correct(p, r.text) for p, r in zip(problems, replies, strict=True))
    assert correct >= 7  # the cloud catches the drafter's wrong steps
    drafted = sum(r.account.drafted_steps for r in replies)
    accepted = sum(r.account.accepted_steps for r in replies)
    assert 0 < accepted < drafted  # some drafts kept, some rewritten by the cloud
    confirmed = sum(r.account.confirmed_steps for r in replies)
    # every rejected draft was rewritten; the rewrites equal to their draft count as accepted
    assert counts["steps_written"] == drafted - accepted + confirmed
    assert all(r.account.scorer_calls == r.account.drafted_steps for r in replies)


def test_first_steps_can_be_left_to_the_cloud() -> None:
    p = task.generate(1, task.HELDOUT_SEED)[0]
    r = pb.ReasonRequest(question=p.question, strategy="specreason", first_cloud_steps=2)
    reply, counts, _ = run(_reason([r]))
    assert counts["steps_written"] >= 2
    assert reply.account.drafted_steps == len(reply.steps) - 2


def test_search_fans_out_drafts_to_other_edges_and_scores_on_the_cloud() -> None:
    problems = task.generate(4, task.HELDOUT_SEED + 1)
    reqs = [
        pb.ReasonRequest(question=p.question, strategy="best_of_n", n=8, seed=i)
        for i, p in enumerate(problems)
    ]
    *replies, counts, _ = run(_reason(reqs, peers=1))
    assert all(r.answer for r in replies)
    assert counts["scored_items"] >= 8 * len(problems)
    assert all(r.account.bytes_sent > 0 for r in replies)


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (pb.ReasonRequest(question="", strategy="specreason"), grpc.StatusCode.INVALID_ARGUMENT),
        (
            pb.ReasonRequest(question="Q 1 + 2 * 3 ?", strategy="magic"),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (pb.ReasonRequest(question="Q 1 + 2 * 3 ?", threshold=3), grpc.StatusCode.INVALID_ARGUMENT),
        (
            pb.ReasonRequest(question="Q 1 + 2 * 3 ?", strategy="beam", delimiter="; ;"),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ],
)
def test_bad_reason_requests_are_rejected(request_, code) -> None:
    err, _, rejected = run(_reason([request_]))
    assert err.code() == code
    assert rejected[0] == 1


def test_lookahead_scores_several_drafted_steps_in_one_pass() -> None:
    problems = task.generate(8, task.HELDOUT_SEED + 3)
    reqs = [
        pb.ReasonRequest(question=p.question, strategy="specreason", threshold=0.4, lookahead=16)
        for p in problems
    ]
    *replies, counts, _ = run(_reason(reqs))
    assert sum(task.is_correct(p, r.text) for p, r in zip(problems, replies, strict=True)) >= 7
    passes = sum(r.account.scorer_calls for r in replies)
    accepted = sum(r.account.accepted_steps for r in replies)
    assert passes < accepted  # one scoring pass kept several steps
    assert counts["score_passes"] <= passes
    # rejected lookahead drafts were rewritten inside the scoring call, from their own tokens
    kept = sum(r.account.cloud_draft_tokens for r in replies)
    assert 0 < kept <= counts["draft_tokens_kept"]  # the cloud also counts confirmed steps


def test_rewriting_in_the_scoring_call_changes_the_cost_not_the_steps() -> None:
    problems = task.generate(6, task.HELDOUT_SEED + 7)
    reqs = [
        pb.ReasonRequest(
            question=p.question,
            strategy="specreason",
            threshold=0.4,
            lookahead=16,
            separate_rewrite=separate,
        )
        for separate in (False, True)
        for p in problems
    ]
    *replies, counts, _ = run(_reason(reqs))
    in_call, apart = replies[: len(problems)], replies[len(problems) :]
    assert [list(r.steps) for r in in_call] == [list(r.steps) for r in apart]
    assert sum(r.account.cloud_draft_tokens for r in in_call) > 0
    assert all(r.account.cloud_draft_tokens == 0 for r in apart)  # written from scratch
    # a second call per rejection, and rounds redrafted after the scorer's false alarms
    assert sum(r.account.scorer_calls for r in apart) >= sum(
        r.account.scorer_calls for r in in_call
    )


async def _score_and_write(calls: list[Any]) -> list[Any]:
    tok = task.WordTokenizer()
    cloud = await start_cloud(load_torch("target"), tok.eos_id, tokenizer=tok)
    out: list[Any] = []
    try:
        async with aio_channel(cloud.address) as ch:
            stub = pb_grpc.CloudStub(ch)
            for method, req in calls:
                try:
                    out.append(await getattr(stub, method)(req, timeout=30))
                except grpc.aio.AioRpcError as exc:
                    out.append(exc)
    finally:
        await cloud.stop()
    return out


def test_the_scoring_call_rewrites_the_first_rejected_step_from_its_draft() -> None:
    p = task.generate(1, task.HELDOUT_SEED + 4)[0]
    truth = p.solution_steps()
    wrong = truth[1].rsplit(" ", 1)[0] + f" {(p.results()[1] + 1) % 100}"
    steps = [truth[0], wrong, *truth[2:]]

    def item(s: list[str]) -> pb.PartialSolution:
        return pb.PartialSolution(question=p.question, steps=s)

    step_req = pb.StepRequest(prefix=item(truth[:1]))
    drafted = pb.StepRequest(prefix=item(truth[:1]), draft=wrong)
    calls = [
        ("ScoreSteps", pb.ScoreRequest(items=[item(steps)], rewrite_below=0.5)),
        ("ScoreSteps", pb.ScoreRequest(items=[item(steps)], rewrite_below=0.5, rewrite_from=2)),
        ("ScoreSteps", pb.ScoreRequest(items=[item(steps)] * 2, rewrite_below=0.5)),
        ("GenerateStep", step_req),
        ("GenerateStep", drafted),
        # every step "rejected": the target confirms the right ones and stops at the wrong one
        ("ScoreSteps", pb.ScoreRequest(items=[item(truth)], rewrite_below=1.1)),
        ("ScoreSteps", pb.ScoreRequest(items=[item(steps)], rewrite_below=1.1)),
        ("GenerateStep", pb.StepRequest(prefix=item([]), delimiter="=")),
        ("GenerateStep", pb.StepRequest(prefix=item([]), delimiter="nope")),
    ]
    fixed, later, two, plain, from_draft, all_right, walked, at_eq, bad = run(
        _score_and_write(calls)
    )
    assert at_eq.step.text == truth[0].split(" =")[0]  # the step ends at the asked delimiter
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert all_right.confirmed_steps == len(truth) and not all_right.HasField("rewrite")
    assert walked.confirmed_steps == 1 and walked.rewrite_index == 1
    assert fixed.items[0].scores[1] < 0.5 <= fixed.items[0].scores[0]
    assert fixed.rewrite_index == 1 and fixed.rewrite.step.text == truth[1]
    assert fixed.rewrite.draft_accepted == len(wrong.split()) - 1  # all but the wrong result
    assert not later.HasField("rewrite")  # steps from index 2 on are right
    assert two.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert from_draft.step == plain.step and plain.draft_accepted == 0
    assert from_draft.draft_accepted == len(wrong.split()) - 1


class RespelledTokenizer:
    """The task's words under other ids, plus words the task never uses: 128 ids, not 111."""

    def __init__(self, seed: int = 0) -> None:
        words = [*task.WordTokenizer().vocab, *(f"unused{i}" for i in range(17))]
        self.vocab = [words[i] for i in np.random.default_rng(seed).permutation(len(words))]
        self.ids = {w: i for i, w in enumerate(self.vocab)}
        self.pad_id, self.bos_id, self.eos_id = (self.ids[w] for w in task.SPECIAL)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        return [self.ids[w] for w in text.split()]

    def decode(self, ids: Sequence[int]) -> str:
        special = (self.pad_id, self.bos_id, self.eos_id)
        return " ".join(self.vocab[i] for i in ids if i not in special)


def respelled_drafter(tok: RespelledTokenizer) -> TorchLM:
    """The bundled drafter's weights re-indexed to ``tok``: a checkpoint with its own vocabulary.

    The embedding (tied to the output head) is permuted and grown; rows of unused words are zero,
    so their logit is 0 and never the argmax of this trained model.
    """
    base, module = task.WordTokenizer(), load_module("drafter")
    state = module.state_dict()
    table = torch.zeros(tok.vocab_size, module.cfg.d_model)
    for word, i in zip(base.vocab, range(base.vocab_size), strict=True):
        table[tok.ids[word]] = state["tok.weight"][i]
    state["tok.weight"] = table
    respelled = TinyLM(replace(module.cfg, vocab_size=tok.vocab_size))
    respelled.load_state_dict(state)
    return TorchLM(respelled, name="drafter-respelled")


def test_steps_travel_as_text_between_models_with_different_vocabularies() -> None:
    tok, base = RespelledTokenizer(), task.WordTokenizer()
    drafter = respelled_drafter(tok)
    problems = task.generate(8, task.HELDOUT_SEED + 6)
    q = problems[0].question
    assert tok.encode(q) != base.encode(q) and drafter.vocab_size != base.vocab_size
    ours = LMStepProposer(drafter, tok).propose(q, [[]], 1, 0.0, seed=0)
    assert ours == LMStepProposer(load_torch("drafter"), base).propose(q, [[]], 1, 0.0, seed=0)
    reqs = [
        pb.ReasonRequest(question=p.question, strategy="specreason", threshold=0.4, lookahead=16)
        for p in problems
    ] + [pb.ReasonRequest(question=problems[1].question, strategy="best_of_n", n=4)]
    *replies, counts, rejected = run(_reason(reqs, peers=1, drafter=(drafter, tok)))
    spec = replies[:-1]
    assert sum(task.is_correct(p, r.text) for p, r in zip(problems, spec, strict=True)) >= 7
    assert sum(r.account.accepted_steps for r in spec) > 0  # the edge's text, read by the cloud
    assert sum(r.account.cloud_draft_tokens for r in spec) > 0  # and re-encoded to draft from
    assert replies[-1].answer and rejected == [0, 0]
