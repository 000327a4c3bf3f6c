"""A cloud engine over vLLM's async engine: the same sessions and rounds as ``VerifyEngine``.

The servicer (``cloud_node.service``) sees the interface of ``cloud_node.service.CloudEngine``:
sessions opened and closed per verify stream, rounds verified (idempotent on round id), cloud-only
generations, metrics and queue depth. Here every model call is a request to vLLM's ``AsyncLLM``
running in this process (its engine core and workers are vLLM's own processes), so vLLM's
scheduler batches the rounds and generations of all sessions continuously; there is no model
thread and no iteration loop of ours.

Verification (``cloud_node.vllm_verify``): greedy rounds and rounds at temperature 1 are one
request with prompt logprobs over context + drafts; other sampled rounds are one one-token request
per draft position. Rounds read vLLM's prefix cache (``skip_reading_prefix_cache=False``), so a
round recomputes the context's last partial block and its drafts, not the whole context; when the
cache covered a row the round needs (that context and those drafts were computed before, e.g. by
a generation of the same prompt), vLLM computes no logprobs for it, and the round is decided again
by one-token requests per position, each of which the cache serves but for its last token.
vLLM is imported when the engine is built, not before.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cloud_node import vllm_verify as vv
from cloud_node.costs import CostTracker
from cloud_node.engine import EngineConfig, EngineStats, Round, RoundResult
from cloud_node.errors import RequestError
from cloud_node.generation import Generated
from cloud_node.vllm_config import VllmSettings
from cloud_node.vllm_sessions import SessionTable, VSession
from models.metrics import acceptance_rate, mean_accepted_length
from models.sampling import SamplingParams
from models.speculative import Verdict


@dataclass(frozen=True)
class ServedModel:
    """What the servicer and the node read of the model: name and sizes."""

    name: str
    vocab_size: int
    max_len: int


@dataclass
class VllmCounters:
    """What the vLLM path adds to ``EngineStats``."""

    requests: int = 0  # requests sent to vLLM
    cache_covered_rounds: int = 0  # rounds the prefix cache covered, scored per position instead
    residual_draws: int = 0  # candidates drawn from p after a rejection
    residual_fallbacks: int = 0  # rejections resolved by a plain draw after residual_limit
    in_flight: int = 0  # requests vLLM holds now
    busy_s: float = 0.0  # wall seconds with at least one request in vLLM
    busy_since: float = 0.0


class VllmEngine:
    """Sessions, validation and verification over a running ``AsyncLLM``."""

    def __init__(
        self,
        llm: Any,
        model: ServedModel,
        config: EngineConfig | None = None,
        settings: VllmSettings | None = None,
    ) -> None:
        from vllm import SamplingParams as VSampling  # the engine's own dependency
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        self._vsampling, self._prompt, self._final = VSampling, TokensPrompt, RequestOutputKind
        self.llm = llm
        self.lm = model
        self.config = config = config or EngineConfig()
        self.settings = settings or VllmSettings()
        self.table = SessionTable(config, model)
        self.sessions = self.table.sessions
        self.stats = EngineStats()
        self.counters = VllmCounters()
        self.costs = CostTracker()
        self.started = time.monotonic()
        self._ids = itertools.count()
        self._rounds_waiting = 0
        self._generations = 0
        self._client_generations: dict[str, int] = {}
        self._sweeper: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the session sweeper on the running loop."""
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def stop(self) -> None:
        """Stop the sweeper and shut vLLM down (its engine processes exit)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        self.llm.shutdown()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.config.sweep_every_s)
            self.stats.expired_sessions += self.table.expire()

    def busy_seconds(self) -> float:
        """Wall seconds during which vLLM held at least one of this node's requests."""
        c = self.counters
        return c.busy_s + (time.monotonic() - c.busy_since if c.in_flight else 0.0)

    @property
    def queue_depth(self) -> int:
        """Verify rounds and generations in vLLM now (vLLM queues and batches them itself)."""
        return self._rounds_waiting + self._generations

    # ------------------------------------------------------------------ vLLM requests
    async def request(self, prompt: Sequence[int], **sampling: Any) -> Any:
        """One vLLM request over token ids; its final ``RequestOutput``."""
        sp = self._vsampling(detokenize=False, output_kind=self._final.FINAL_ONLY, **sampling)
        c = self.counters
        if c.in_flight == 0:
            c.busy_since = time.monotonic()
        c.in_flight += 1
        c.requests += 1
        out = None
        try:
            rid = f"tandem-{next(self._ids)}"
            async for got in self.llm.generate(
                self._prompt(prompt_token_ids=list(prompt)), sp, rid
            ):
                out = got
        finally:
            c.in_flight -= 1
            if c.in_flight == 0:
                c.busy_s += time.monotonic() - c.busy_since
        if out is None:
            raise RequestError("unavailable", "vLLM returned no output")
        return out

    # ------------------------------------------------------------------ sessions
    def open(
        self,
        session_id: str,
        prompt: Sequence[int],
        params: SamplingParams,
        *,
        owner: object | None = None,
        client: str = "",
    ) -> int:
        """Open (or, for its owner, reopen) a session; the committed length."""
        self.stats.expired_sessions += self.table.expire()
        self.start()
        return self.table.open(session_id, prompt, params, owner, client)

    def close(self, session_id: str, owner: object | None = None) -> bool:
        """Forget a session of ``owner``; False when it was not open."""
        return self.table.close(session_id, owner)

    def close_owned(self, owner: object) -> int:
        """Forget every session of ``owner``."""
        return self.table.close_owned(owner)

    # ------------------------------------------------------------------ verification
    async def submit(self, r: Round, owner: object | None = None) -> RoundResult:
        """Verify one round of ``owner``'s session; idempotent on round_id."""
        s = self.table.validate(r, owner, min_draft=1)
        if s.last_result is not None and s.last_result.round_id == r.round_id:
            return s.last_result
        if r.base_position != len(s.committed):
            raise RequestError(
                "invalid",
                f"base_position {r.base_position} does not match committed length "
                f"{len(s.committed)} of session {r.session_id!r}",
            )
        if s.busy:
            raise RequestError("invalid", f"session {r.session_id!r} already has a round in flight")
        if self._rounds_waiting >= self.config.queue_limit:
            raise RequestError(
                "exhausted", f"verify queue full ({self.config.queue_limit} rounds waiting)"
            )
        s.busy = True
        self._rounds_waiting += 1
        t0 = time.perf_counter()
        try:
            verdict = await self._verdict(s, r.proposal.tokens.tolist(), r.proposal.q)
        finally:
            self._rounds_waiting -= 1
            s.busy = False
            s.last_used = time.monotonic()
        ms = (time.perf_counter() - t0) * 1e3
        k = len(r.proposal.tokens)
        s.committed += [*r.proposal.tokens[: verdict.accepted].tolist(), verdict.next_token]
        res = RoundResult(
            r.session_id, r.round_id, r.base_position, verdict, len(s.committed), ms, 0.0, 1, ms
        )
        s.last_result = res
        st = self.stats
        st.rounds += 1
        st.drafted += k
        st.accepted += verdict.accepted
        st.batches += 1
        st.batched_rounds += 1
        st.verify_model_s += ms / 1e3
        self.costs.observe_verify(k + 1, ms)
        return res

    async def _verdict(self, s: VSession, drafts: list[int], q: np.ndarray | None) -> Verdict:
        params, k = s.params, len(drafts)
        scored = await self._score(s, drafts) if vv.one_request(params) else None
        first: list[tuple[int, float] | None] = [None] * k
        if scored is not None:
            rows, bonus = scored
            if params.greedy:
                return vv.greedy_verdict(drafts, rows, bonus)
            p = vv.draft_probs(drafts, rows)
        else:
            p, drawn, bonus = await self._per_position(s, drafts)
            if params.greedy:  # each draw is the argmax at its position
                return vv.greedy_from_draws(drafts, [y for y, _ in drawn], bonus)
            first = list(drawn)
        assert q is not None  # validated: sampled rounds carry q
        kept = vv.kept_drafts(drafts, p, q, s.rng)
        if kept == k:
            return Verdict(k, bonus)
        prefix = s.committed + drafts[:kept]
        return Verdict(kept, await self._residual(prefix, params, q[kept], first[kept], s.rng))

    def _sampling(self, params: SamplingParams, rng: np.random.Generator) -> dict[str, Any]:
        if params.greedy:
            return {"temperature": 0.0}
        return {"temperature": params.temperature, "top_p": params.top_p, "seed": vv.seed(rng)}

    async def _score(
        self, s: VSession, drafts: list[int]
    ) -> tuple[list[dict[int, Any]], int] | None:
        """Prompt-logprob rows of the drafts and the token sampled after them (one request);
        None when the prefix cache already held a row the round needs (that exact context and
        drafts were computed before), whose logprobs vLLM then does not compute."""
        n, k = len(s.committed), len(drafts)
        want = 1 if s.params.greedy else 0  # the argmax for greedy; the draft's logprob always
        sampling = {"max_tokens": 1, "prompt_logprobs": want, **self._sampling(s.params, s.rng)}
        reuse = self.settings.prefix_reuse
        out = await self.request(
            s.committed + drafts, skip_reading_prefix_cache=not reuse, **sampling
        )
        if reuse and (out.num_cached_tokens or 0) > n - 1:
            self.counters.cache_covered_rounds += 1
            return None
        return vv.draft_rows(out.prompt_logprobs, n, k), int(out.outputs[0].token_ids[0])

    async def _per_position(
        self, s: VSession, drafts: list[int]
    ) -> tuple[list[float], list[tuple[int, float] | None], int]:
        """p_i(x_i) and one draw y_i ~ p_i with p_i(y_i) at every draft position, and a draw
        after all drafts: k + 1 one-token requests at the round's temperature and top-p."""
        k = len(drafts)
        calls = []
        for i in range(k + 1):
            extra: dict[str, Any] = {"logprob_token_ids": [drafts[i]]} if i < k else {}
            calls.append(
                self.request(
                    s.committed + drafts[:i],
                    max_tokens=1,
                    logprobs=None if i < k else 0,
                    **extra,
                    **self._sampling(s.params, s.rng),
                )
            )
        outs = await asyncio.gather(*calls)
        p, first = [], []
        for i, out in enumerate(outs[:k]):
            c = out.outputs[0]
            y = int(c.token_ids[0])
            p.append(float(np.exp(vv.sampled_logprob(c, drafts[i]))))
            first.append((y, float(np.exp(vv.sampled_logprob(c, y)))))
        return p, first, int(outs[k].outputs[0].token_ids[0])

    async def _residual(
        self,
        prefix: list[int],
        params: SamplingParams,
        q_row: np.ndarray,
        first: tuple[int, float] | None,
        rng: np.random.Generator,
    ) -> int:
        """A token from normalize(max(0, p - q)) at the end of ``prefix``, drawn exactly by
        rejection from vLLM's own samples of p (``first``: one already drawn)."""
        st = self.settings
        candidates = [first] if first is not None else []
        drawn = 0
        while drawn < st.residual_limit:
            if not candidates:
                candidates = await self._draws(prefix, params, rng, st.residual_batch)
            y, p_y = candidates.pop(0)
            drawn += 1
            self.counters.residual_draws += 1
            if vv.keep_candidate(p_y, float(q_row[y]), rng):
                return y
        # p and q agree so closely that the residual is almost empty: a draw from p is then as
        # close to exact as the float32 probabilities themselves (counted, see metrics)
        self.counters.residual_fallbacks += 1
        return (await self._draws(prefix, params, rng, 1))[0][0]

    async def _draws(
        self, prefix: list[int], params: SamplingParams, rng: np.random.Generator, m: int
    ) -> list[tuple[int, float]]:
        """m independent tokens from p at the end of ``prefix``, each with p(token)."""
        out = await self.request(
            prefix, max_tokens=1, n=m, logprobs=0, **self._sampling(params, rng)
        )
        return [
            (int(c.token_ids[0]), float(np.exp(vv.sampled_logprob(c, int(c.token_ids[0])))))
            for c in out.outputs
        ]

    # ------------------------------------------------------------------ cloud-only generation
    async def generate(
        self,
        prompt: Sequence[int],
        params: SamplingParams,
        max_new: int,
        eos_id: int | None,
        client: str = "",
    ) -> Generated:
        """Autoregressive generation by vLLM (continuous batching with every other request)."""
        if max_new < 1:
            raise RequestError("invalid", "max_new_tokens must be at least 1")
        self.table.check_prompt(prompt)
        max_new = min(max_new, self.lm.max_len - len(prompt))
        self._admit_generation(client)
        t0 = time.perf_counter()
        try:
            sampling = (
                {"temperature": 0.0}
                if params.greedy
                else {"temperature": params.temperature, "top_p": params.top_p, "seed": params.seed}
            )
            stop = {"ignore_eos": True} if eos_id is None else {"stop_token_ids": [eos_id]}
            out = await self.request(prompt, max_tokens=max_new, **stop, **sampling)
        finally:
            self._generations -= 1
            self._client_generations[client] -= 1
            if not self._client_generations[client]:
                del self._client_generations[client]
        ms = (time.perf_counter() - t0) * 1e3
        tokens = [int(t) for t in out.outputs[0].token_ids]
        self.stats.generated_tokens += len(tokens)
        self.stats.generate_model_s += ms / 1e3
        self.costs.observe_generate(len(tokens), ms)
        return Generated(tokens, ms, 0.0, ms)

    def _admit_generation(self, client: str) -> None:
        c = self.config
        if self._generations >= c.max_generations:
            raise RequestError("exhausted", f"all {c.max_generations} generations are in use")
        held = self._client_generations.get(client, 0)
        if held >= c.max_client_generations:
            raise RequestError(
                "exhausted", f"client {client!r} holds {held} generations, its share"
            )
        self._generations += 1
        self._client_generations[client] = held + 1

    # ------------------------------------------------------------------ figures
    def metrics(self) -> dict[str, float]:
        """Counters and gauges of the engine, with the keys of ``VerifyEngine.metrics``."""
        st, c = self.stats, self.counters
        up = max(time.monotonic() - self.started, 1e-9)
        return {
            "sessions_active": float(len(self.sessions)),
            "queue_depth": float(self.queue_depth),
            "rounds": float(st.rounds),
            "drafted_tokens": float(st.drafted),
            "accepted_tokens": float(st.accepted),
            "acceptance_rate": acceptance_rate(st.accepted, st.drafted),
            "mean_accepted_length": mean_accepted_length(st.accepted, st.rounds),
            "verify_model_s": st.verify_model_s,
            "generate_model_s": st.generate_model_s,
            "busy_fraction": min(1.0, max(0.0, self.busy_seconds() / up)),
            "busy_s": self.busy_seconds(),
            "generated_tokens": float(st.generated_tokens),
            "generations_active": float(self._generations),
            "expired_sessions": float(st.expired_sessions),
            "rejected_requests": float(st.rejected),
            "vllm_requests": float(c.requests),
            "vllm_cache_covered_rounds": float(c.cache_covered_rounds),
            "vllm_residual_draws": float(c.residual_draws),
            "vllm_residual_fallbacks": float(c.residual_fallbacks),
            "vllm_tensor_parallel_size": float(self.settings.tensor_parallel_size),
            "vllm_pipeline_parallel_size": float(self.settings.pipeline_parallel_size),
        }
