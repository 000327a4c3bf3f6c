"""Reasoning from the edge: step speculation and PRM-guided search as the controller.

The edge drafts steps (its own drafter, and other edge nodes' through ProposeSteps); the cloud
scores them and rewrites the first one it rejects in the same call (ScoreSteps), or writes a step
on its own (GenerateStep). Steps travel as text.
Search strategies are the same pure code as in a single process: they get a proposer and a scorer
whose calls go over gRPC, and run on a worker thread with blocking stubs.

Threads: searches run on their own pool; the drafter's work goes to the drafter's thread in
bounded chunks; calls to peer edges go to a third pool. A search thread waits on the other two,
and nothing waits on a search thread, so concurrent searches cannot deadlock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from itertools import takewhile

import grpc

from edge_node.chunks import ChunkedProposer
from edge_node.reason_types import (
    SPECREASON,
    Proposals,
    ProposeTask,
    ReasonAccount,
    ReasonLimits,
    ReasonResult,
    ReasonTask,
)
from edge_node.remote import CloudSteps, PeerProposer, RemoteScorer, SyncChannels, Traffic
from edge_node.speculation import SpecSettings, Speculator
from models.base import CausalLM, Tokenizer
from models.reasoning.proposer import LMStepProposer, StepDraft
from models.reasoning.search_core import answer_of
from models.reasoning.strategies import STRATEGIES, Budget, SearchConfig
from models.sampling import SamplingParams
from node_runtime.kinds import KPolicy
from node_runtime.serving import log_event
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

log = logging.getLogger("tandem.edge")


class FanOutProposer:
    """Splits proposal work between this edge's drafter and other edge nodes.

    A peer that fails (down, full, a bad answer) costs nothing but time: its share is drafted
    here instead.
    """

    def __init__(
        self, local: ChunkedProposer, peers: Sequence[PeerProposer], pool: Executor
    ) -> None:
        self.local, self.peers, self.pool = local, list(peers), pool

    def propose(
        self,
        question: str,
        prefixes: Sequence[Sequence[str]],
        n: int,
        temperature: float,
        seed: int,
        max_tokens: int | None = None,
    ) -> list[list[StepDraft]]:
        """``n`` candidates per prefix, in shares: each worker seeds its share differently."""
        workers = 1 + len(self.peers)
        if workers == 1 or n < workers:
            return self.local.propose(question, prefixes, n, temperature, seed, max_tokens)
        shares = [n // workers + (1 if i < n % workers else 0) for i in range(workers)]
        cap = None if max_tokens is None else max(1, max_tokens // workers)
        seeds = [seed, *(seed * 1000 + i for i in range(1, workers))]
        futures = [
            self.pool.submit(p.propose, question, prefixes, shares[i], temperature, seeds[i], cap)
            for i, p in enumerate(self.peers, start=1)
        ]
        parts = [self.local.propose(question, prefixes, shares[0], temperature, seed, cap)]
        for i, f in enumerate(futures, start=1):
            try:
                parts.append(f.result())
            except (grpc.RpcError, ValueError) as exc:
                log_event(log, "peer_propose_failed", logging.WARNING, reason=str(exc)[:200])
                parts.append(
                    self.local.propose(question, prefixes, shares[i], temperature, seeds[i], cap)
                )
        return [[d for part in parts for d in part[j]] for j in range(len(prefixes))]


class Reasoner:
    """ProposeSteps and Reason for one edge node, over domain values."""

    def __init__(
        self,
        lm: CausalLM,
        tok: Tokenizer,
        speculator: Speculator,
        limits: ReasonLimits | None = None,
    ) -> None:
        self.proposer = LMStepProposer(lm, tok)  # ValueError: no one-token step delimiter
        self.speculator = speculator
        self.limits = limits = limits or ReasonLimits()
        self.pool = speculator.pool  # the drafter's thread: one model user at a time
        self.search_pool = ThreadPoolExecutor(limits.search_threads, thread_name_prefix="search")
        self.peer_pool = ThreadPoolExecutor(limits.peer_threads, thread_name_prefix="peer")
        self.channels = SyncChannels()  # blocking channels of the searches, per address

    def _proposer(self, delimiter: str) -> LMStepProposer:
        try:
            return self.proposer.with_delimiter(delimiter)
        except ValueError as exc:
            raise ValueError(f"delimiter: {exc}") from None

    async def propose(self, task: ProposeTask) -> Proposals:
        """Candidates for a peer's search, drafted a chunk at a time."""
        t0 = time.perf_counter()
        chunked = ChunkedProposer(self._proposer(task.delimiter), self.pool, self.limits.chunk_rows)
        drafts = await chunked.propose_async(
            task.question,
            task.prefixes,
            task.n,
            task.temperature,
            task.seed,
            task.max_tokens,
        )
        return Proposals(drafts, (time.perf_counter() - t0) * 1e3)

    async def reason(
        self, task: ReasonTask, cloud: pb_grpc.CloudStub, cloud_address: str, peers: list[str]
    ) -> ReasonResult:
        """Step speculation or a search, scored (and helped) by ``cloud``."""
        prop = self._proposer(task.delimiter)
        if task.strategy == SPECREASON:
            return await self._specreason(task, CloudSteps(cloud, ReasonAccount()), prop)
        if task.strategy not in STRATEGIES:
            raise ValueError(
                f"strategy: {task.strategy!r} not in {SPECREASON}, {sorted(STRATEGIES)}"
            )
        return await asyncio.get_running_loop().run_in_executor(
            self.search_pool, self._search, task, cloud_address, peers, prop
        )

    def _search(
        self, task: ReasonTask, cloud_address: str, peers: list[str], prop: LMStepProposer
    ) -> ReasonResult:
        t0 = time.perf_counter()
        traffic, timeout = Traffic(), self.limits.timeout_s
        scorer = RemoteScorer(self.channels.get(cloud_address), traffic, timeout_s=timeout)
        delim = prop.config.delimiter
        remote = [PeerProposer(self.channels.get(a), traffic, delim, timeout) for a in peers]
        local = ChunkedProposer(prop, self.pool, self.limits.chunk_rows)
        proposer = FanOutProposer(local, remote, self.peer_pool)
        budget = Budget(
            max_tokens=task.token_budget or Budget.max_tokens,
            max_scored=task.score_budget or Budget.max_scored,
        )
        cfg = SearchConfig(n=task.n, m=task.m, seed=task.seed, delimiter=delim)
        res = STRATEGIES[task.strategy](task.question, proposer, scorer, budget, cfg)
        acc = ReasonAccount(
            drafted_tokens=res.account.tokens,
            scorer_calls=res.account.scored,
            bytes_sent=traffic.sent,
            bytes_received=traffic.received,
            wall_s=time.perf_counter() - t0,
        )
        return ReasonResult(task.request_id, res.answer or "", tuple(res.steps), res.text, acc)

    async def _speculate_step(
        self, prop: LMStepProposer, question: str, steps: list[str], cloud: CloudSteps
    ) -> StepDraft:
        """The target's next step by token speculation: this edge drafts, the cloud verifies."""
        prompt = prop.prompt(question, steps)
        delim, eos = prop.delimiter_id, prop.tok.eos_id
        settings = SpecSettings(
            max_new=prop.config.max_step_tokens,
            eos_id=eos,
            k=4,
            k_policy=KPolicy.HEURISTIC,
            stop_ids=(delim,),
        )

        async def only(_: Sequence[str]) -> tuple[str, pb_grpc.CloudStub] | None:
            return None  # losing the cloud mid-step: the drafter finishes the step

        res = await self.speculator.run(
            prompt, SamplingParams(), settings, only, first=("", cloud.stub)
        )
        acc = cloud.acc
        acc.cloud_tokens += len(res.tokens)
        acc.bytes_sent += res.account.bytes_sent
        acc.bytes_received += res.account.bytes_received
        ended = bool(res.tokens) and res.tokens[-1] == eos
        closed = bool(res.tokens) and res.tokens[-1] in (delim, eos)
        text = prop.tok.decode([t for t in res.tokens if t != delim]).strip()
        return StepDraft(text, len(res.tokens), closed, ended)

    async def _score_prefix(
        self, task: ReasonTask, steps: list[str], drafts: list[StepDraft], cloud: CloudSteps
    ) -> tuple[int, StepDraft | None]:
        """How many leading drafts the cloud's scorer keeps (one pass scores them all), and the
        target's rewrite of the first one it rejects, which comes back in the same call unless
        the request asks for the rewrite apart (``token_speculation``, ``separate_rewrite``)."""
        usable = list(takewhile(lambda d: d.complete and bool(d.text), drafts))
        if not usable:
            return 0, None
        in_call = not (task.token_speculation or task.separate_rewrite)
        out = await cloud.score(
            task.question,
            [*steps, *(d.text for d in usable)],
            task.threshold if in_call else 0.0,
            len(steps),
            task.delimiter,
        )
        acc = cloud.acc
        acc.scorer_calls += 1
        if in_call:  # the cloud walked the steps: its rewrite index decides
            acc.confirmed_steps += out.confirmed_steps
            if out.rewrite is None:
                return len(usable), None
            acc.cloud_tokens += out.rewrite.tokens
            acc.cloud_draft_tokens += out.draft_accepted
            return min(max(0, out.rewrite_index - len(steps)), len(usable)), out.rewrite
        kept = 0
        for score in out.scores[len(steps) :]:
            if score < task.threshold:
                break
            kept += 1
        return kept, None

    async def _cloud_step(
        self, task: ReasonTask, prop: LMStepProposer, steps: list[str], cloud: CloudSteps
    ) -> StepDraft:
        if task.token_speculation:  # the target's step, drafted by this edge
            return await self._speculate_step(prop, task.question, steps, cloud)
        step = await cloud.write_step(task.question, steps, task.delimiter)
        cloud.acc.cloud_tokens += step.tokens
        return step

    async def _specreason(
        self, task: ReasonTask, cloud: CloudSteps, prop: LMStepProposer
    ) -> ReasonResult:
        """Draft steps, keep those scoring at least the threshold, have the cloud write the rest.

        Each round drafts ``lookahead`` steps (one, as in SpecReason, by default) and scores them
        in one pass; the leading steps that pass are kept and the cloud writes the first one
        that fails, as token speculation does with tokens. The cloud rewrites that step in the
        scoring call itself, with the rejected step as its token draft, so a rejection costs no
        extra round trip and the target decodes only past the part of the draft it agrees with.
        """
        t0 = time.perf_counter()
        steps: list[str] = []
        acc = cloud.acc
        loop = asyncio.get_running_loop()
        done = False
        while not done and len(steps) < self.limits.max_steps:
            drafts: list[StepDraft] = []
            if len(steps) >= task.first_cloud_steps:
                drafts = await loop.run_in_executor(
                    self.pool, prop.draft_steps, task.question, list(steps), task.lookahead
                )
                acc.drafted_tokens += sum(d.tokens for d in drafts)
                acc.drafted_steps += len(drafts)
            kept, rewrite = await self._score_prefix(task, steps, drafts, cloud)
            acc.accepted_steps += kept
            steps += [d.text for d in drafts[:kept]]
            done = kept > 0 and (answer_of(steps) is not None or drafts[kept - 1].ended)
            if done or (drafts and kept == len(drafts)):
                continue  # all drafts kept: draft on from there
            step = rewrite or await self._cloud_step(task, prop, steps, cloud)
            if step.text:
                steps.append(step.text)
            done = answer_of([step.text]) is not None or step.ended or not step.text
        acc.wall_s = time.perf_counter() - t0
        text = prop.config.joiner.join(steps)
        return ReasonResult(task.request_id, answer_of(steps) or "", tuple(steps), text, acc)

    def close(self) -> None:
        """Close the searches' channels and stop the pools (running work is not waited for)."""
        self.channels.close()
        self.search_pool.shutdown(wait=False, cancel_futures=True)
        self.peer_pool.shutdown(wait=False, cancel_futures=True)
