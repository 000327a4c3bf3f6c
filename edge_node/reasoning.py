"""Reasoning from the edge: step speculation and PRM-guided search as the controller.

The edge drafts steps (its own drafter, and other edge nodes' through ProposeSteps); the cloud
scores them and rewrites the first one it rejects in the same call (ScoreSteps), or writes a step
on its own (GenerateStep). Steps travel as text.
Search strategies are the same pure code as in a single process: they get a proposer and a scorer
whose calls go over gRPC, and run on a worker thread with blocking stubs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import takewhile

import grpc

from edge_node.speculation import SpecSettings, Speculator
from models.base import CausalLM, Tokenizer
from models.reasoning.proposer import LMStepProposer, StepDraft
from models.reasoning.protocols import Item
from models.reasoning.strategies import STRATEGIES, Budget, SearchConfig
from models.sampling import SamplingParams
from tandem_wire.caps import GRPC_OPTIONS
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

ANSWER = "A "
MAX_STEPS = 16  # a reasoning request stops after this many steps


@dataclass
class Traffic:
    """What crossed the network for one reasoning request."""

    sent: int = 0
    received: int = 0
    scorer_calls: int = 0  # partial solutions scored
    cloud_tokens: int = 0  # tokens of steps the cloud wrote


def draft_from_wire(d: pb.StepDraftMsg) -> StepDraft:
    return StepDraft(d.text, d.tokens, d.complete, d.ended)


def draft_to_wire(d: StepDraft) -> pb.StepDraftMsg:
    return pb.StepDraftMsg(text=d.text, tokens=d.tokens, complete=d.complete, ended=d.ended)


class RemoteScorer:
    """A StepScorer whose passes run on a cloud node (blocking calls, for a worker thread)."""

    def __init__(
        self, address: str, traffic: Traffic, scorer: str = "", timeout_s: float = 30.0
    ) -> None:
        self.stub = pb_grpc.CloudStub(grpc.insecure_channel(address, options=GRPC_OPTIONS))
        self.traffic, self.scorer, self.timeout_s = traffic, scorer, timeout_s

    def score(self, question: str, steps: Sequence[str]) -> list[float]:
        return self.score_batch([(question, steps)])[0]

    def score_batch(self, items: Sequence[Item]) -> list[list[float]]:
        req = pb.ScoreRequest(
            items=[pb.PartialSolution(question=q, steps=list(s)) for q, s in items],
            scorer=self.scorer,
        )
        reply = self.stub.ScoreSteps(req, timeout=self.timeout_s)
        self.traffic.sent += req.ByteSize()
        self.traffic.received += reply.ByteSize()
        self.traffic.scorer_calls += len(items)
        return [list(s.scores) for s in reply.items]


class FanOutProposer:
    """Splits proposal work between this edge's drafter and other edge nodes."""

    def __init__(
        self,
        local: LMStepProposer,
        peers: Sequence[str],
        traffic: Traffic,
        pool: ThreadPoolExecutor,
    ) -> None:
        self.local, self.traffic, self.pool = local, traffic, pool
        opts = GRPC_OPTIONS
        self.peers = [pb_grpc.EdgeStub(grpc.insecure_channel(a, options=opts)) for a in peers]

    def propose(
        self,
        question: str,
        prefixes: Sequence[Sequence[str]],
        n: int,
        temperature: float,
        seed: int,
        max_tokens: int | None = None,
    ) -> list[list[StepDraft]]:
        workers = 1 + len(self.peers)
        if workers == 1 or n < workers:
            return self.local.propose(question, prefixes, n, temperature, seed, max_tokens)
        # n candidates per prefix, split in shares; each worker seeds its share differently
        shares = [n // workers + (1 if i < n % workers else 0) for i in range(workers)]
        cap = None if max_tokens is None else max(1, max_tokens // workers)
        futures = [
            self.pool.submit(
                self.local.propose, question, prefixes, shares[0], temperature, seed, cap
            )
        ]
        for i, stub in enumerate(self.peers, start=1):
            futures.append(
                self.pool.submit(
                    self._remote,
                    stub,
                    question,
                    prefixes,
                    shares[i],
                    temperature,
                    seed * 1000 + i,
                    cap,
                )
            )
        parts = [f.result() for f in futures]
        return [[d for part in parts for d in part[j]] for j in range(len(prefixes))]

    def _remote(
        self,
        stub: pb_grpc.EdgeStub,
        question: str,
        prefixes: Sequence[Sequence[str]],
        n: int,
        temperature: float,
        seed: int,
        cap: int | None,
    ) -> list[list[StepDraft]]:
        req = pb.ProposeRequest(
            question=question,
            prefixes=[pb.PartialSolution(steps=list(p)) for p in prefixes],
            n=n,
            temperature=temperature,
            seed=seed,
            max_tokens=cap or 0,
            delimiter=self.local.config.delimiter,
        )
        reply = stub.ProposeSteps(req, timeout=30)
        self.traffic.sent += req.ByteSize()
        self.traffic.received += reply.ByteSize()
        return [[draft_from_wire(d) for d in c.drafts] for c in reply.per_prefix]


class Reasoner:
    """ProposeSteps and Reason for one edge node."""

    def __init__(self, lm: CausalLM, tok: Tokenizer, speculator: Speculator) -> None:
        self.proposer = LMStepProposer(lm, tok)
        self.speculator = speculator
        self.pool = speculator.pool  # the drafter's thread: one model user at a time
        self.search_pool = ThreadPoolExecutor(4, thread_name_prefix="search")

    async def propose(self, r: pb.ProposeRequest) -> pb.ProposeReply:
        if not 1 <= r.n <= 256 or not r.prefixes or len(r.prefixes) > 256:
            raise ValueError("n: 1 to 256 candidates; prefixes: 1 to 256")
        t0 = time.perf_counter()
        prefixes = [list(p.steps) for p in r.prefixes]
        drafts = await asyncio.get_running_loop().run_in_executor(
            self.pool,
            self.proposer.with_delimiter(r.delimiter).propose,
            r.question,
            prefixes,
            r.n,
            r.temperature,
            r.seed,
            r.max_tokens or None,
        )
        return pb.ProposeReply(
            per_prefix=[pb.Candidates(drafts=[draft_to_wire(d) for d in c]) for c in drafts],
            model_ms=(time.perf_counter() - t0) * 1e3,
        )

    async def reason(
        self, r: pb.ReasonRequest, cloud: pb_grpc.CloudStub, cloud_address: str, peers: list[str]
    ) -> pb.ReasonReply:
        prop = self.proposer.with_delimiter(r.delimiter)
        if r.strategy == "specreason":
            return await self._specreason(r, cloud, prop)
        if r.strategy not in STRATEGIES:
            raise ValueError(f"strategy {r.strategy!r} not in specreason, {sorted(STRATEGIES)}")
        return await asyncio.get_running_loop().run_in_executor(
            self.search_pool, self._search, r, cloud_address, peers, prop
        )

    def _search(
        self, r: pb.ReasonRequest, cloud_address: str, peers: list[str], prop: LMStepProposer
    ) -> pb.ReasonReply:
        t0 = time.perf_counter()
        traffic = Traffic()
        scorer = RemoteScorer(cloud_address, traffic)
        proposer = FanOutProposer(prop, peers, traffic, self.search_pool)
        budget = Budget(
            max_tokens=r.token_budget or Budget.max_tokens,
            max_scored=r.score_budget or Budget.max_scored,
        )
        cfg = SearchConfig(n=r.n or 8, m=r.m or 4, seed=int(r.seed))
        res = STRATEGIES[r.strategy](r.question, proposer, scorer, budget, cfg)
        return pb.ReasonReply(
            request_id=r.request_id,
            answer=res.answer or "",
            steps=list(res.steps),
            text=res.text,
            account=pb.ReasonAccount(
                drafted_tokens=res.account.tokens,
                scorer_calls=res.account.scored,
                bytes_sent=traffic.sent,
                bytes_received=traffic.received,
                wall_s=time.perf_counter() - t0,
            ),
        )

    async def _speculate_step(
        self,
        prop: LMStepProposer,
        question: str,
        steps: list[str],
        cloud: pb_grpc.CloudStub,
        acc: pb.ReasonAccount,
    ) -> StepDraft:
        """The target's next step by token speculation: this edge drafts, the cloud verifies."""
        prompt = prop.prompt(question, steps)
        delim, eos = prop.delimiter_id, prop.tok.eos_id
        settings = SpecSettings(
            prop.config.max_step_tokens, eos, k=4, stop_ids=(delim,), k_policy="heuristic"
        )

        async def only(_: Sequence[str]) -> tuple[str, pb_grpc.CloudStub] | None:
            return None  # losing the cloud mid-step: the drafter finishes the step

        res = await self.speculator.run(prompt, SamplingParams(), settings, only, first=("", cloud))
        acc.cloud_tokens += len(res.tokens)
        acc.bytes_sent += res.account.bytes_sent
        acc.bytes_received += res.account.bytes_received
        ended = bool(res.tokens) and res.tokens[-1] == eos
        closed = bool(res.tokens) and res.tokens[-1] in (delim, eos)
        text = prop.tok.decode([t for t in res.tokens if t != delim]).strip()
        return StepDraft(text, len(res.tokens), closed, ended)

    async def _score_prefix(
        self,
        r: pb.ReasonRequest,
        steps: list[str],
        drafts: list[StepDraft],
        cloud: pb_grpc.CloudStub,
        acc: pb.ReasonAccount,
    ) -> tuple[int, StepDraft | None]:
        """How many leading drafts the cloud's scorer keeps (one pass scores them all), and the
        target's rewrite of the first one it rejects, which comes back in the same call unless
        the request asks for the rewrite apart (``token_speculation``, ``separate_rewrite``)."""
        usable = list(takewhile(lambda d: d.complete and bool(d.text), drafts))
        if not usable:
            return 0, None
        threshold = r.threshold or 0.5
        req = pb.ScoreRequest(
            items=[
                pb.PartialSolution(question=r.question, steps=[*steps, *(d.text for d in usable)])
            ],
            rewrite_below=0.0 if r.token_speculation or r.separate_rewrite else threshold,
            rewrite_from=len(steps),
            delimiter=r.delimiter,
        )
        reply = await cloud.ScoreSteps(req, timeout=30)
        acc.bytes_sent += req.ByteSize()
        acc.bytes_received += reply.ByteSize()
        acc.scorer_calls += 1
        if req.rewrite_below > 0:  # the cloud walked the steps: its rewrite index decides
            acc.confirmed_steps += reply.confirmed_steps
            if not reply.HasField("rewrite"):
                return len(usable), None
            acc.cloud_tokens += reply.rewrite.step.tokens
            acc.cloud_draft_tokens += reply.rewrite.draft_accepted
            kept = min(max(0, reply.rewrite_index - len(steps)), len(usable))
            return kept, draft_from_wire(reply.rewrite.step)
        kept = 0
        for score in list(reply.items[0].scores)[len(steps) :]:
            if score < threshold:
                break
            kept += 1
        return kept, None

    async def _cloud_step(
        self,
        r: pb.ReasonRequest,
        prop: LMStepProposer,
        steps: list[str],
        cloud: pb_grpc.CloudStub,
        acc: pb.ReasonAccount,
    ) -> StepDraft:
        if r.token_speculation:  # the target's step, drafted by this edge
            return await self._speculate_step(prop, r.question, steps, cloud, acc)
        req = pb.StepRequest(
            prefix=pb.PartialSolution(question=r.question, steps=steps), delimiter=r.delimiter
        )
        reply = await cloud.GenerateStep(req, timeout=30)
        acc.bytes_sent += req.ByteSize()
        acc.bytes_received += reply.ByteSize()
        acc.cloud_tokens += reply.step.tokens
        return draft_from_wire(reply.step)

    async def _specreason(
        self, r: pb.ReasonRequest, cloud: pb_grpc.CloudStub, prop: LMStepProposer
    ) -> pb.ReasonReply:
        """Draft steps, keep those scoring at least the threshold, have the cloud write the rest.

        Each round drafts ``lookahead`` steps (one, as in SpecReason, by default) and scores them
        in one pass; the leading steps that pass are kept and the cloud writes the first one
        that fails, as token speculation does with tokens. The cloud rewrites that step in the
        scoring call itself, with the rejected step as its token draft, so a rejection costs no
        extra round trip and the target decodes only past the part of the draft it agrees with.
        """
        t0 = time.perf_counter()
        lookahead = max(1, r.lookahead)
        steps: list[str] = []
        acc = pb.ReasonAccount()
        loop = asyncio.get_running_loop()
        done = False
        while not done and len(steps) < MAX_STEPS:
            drafts: list[StepDraft] = []
            if len(steps) >= r.first_cloud_steps:
                drafts = await loop.run_in_executor(
                    self.pool, prop.draft_steps, r.question, list(steps), lookahead
                )
                acc.drafted_tokens += sum(d.tokens for d in drafts)
                acc.drafted_steps += len(drafts)
            kept, rewrite = await self._score_prefix(r, steps, drafts, cloud, acc)
            acc.accepted_steps += kept
            steps += [d.text for d in drafts[:kept]]
            done = kept > 0 and (steps[-1].startswith(ANSWER) or drafts[kept - 1].ended)
            if done or (drafts and kept == len(drafts)):
                continue  # all drafts kept: draft on from there
            step = rewrite or await self._cloud_step(r, prop, steps, cloud, acc)
            if step.text:
                steps.append(step.text)
            done = step.text.startswith(ANSWER) or step.ended or not step.text
        acc.wall_s = time.perf_counter() - t0
        answer = steps[-1][len(ANSWER) :].strip() if steps and steps[-1].startswith(ANSWER) else ""
        return pb.ReasonReply(
            request_id=r.request_id, answer=answer, steps=steps, text=" ; ".join(steps), account=acc
        )
