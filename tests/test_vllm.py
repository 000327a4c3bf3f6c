"""The cloud tier on vLLM: a real cloud node process running SmolLM2-135M-Instruct in vLLM
(``.venv-vllm``, made by scripts/setup-vllm), spoken to over gRPC from this process.

One node serves the whole module (vLLM takes about half a minute to start). Skipped, with the
reason, where the vLLM environment or the converted checkpoint is missing.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import grpc
import numpy as np
import pytest

from cloud_node import vllm_verify as vv
from models.sampling import SamplingParams
from models.speculative import Verdict
from node_runtime.serving import aio_channel
from tandem import vllm_support as vs
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

needs_vllm = pytest.mark.skipif(bool(vs.missing()), reason=vs.missing() or "ready")


class Row:
    """A prompt-logprob entry as vLLM gives it (``Logprob``: logprob and rank)."""

    def __init__(self, logprob: float, rank: int) -> None:
        self.logprob, self.rank = logprob, rank


def test_greedy_verdicts_from_prompt_logprob_ranks() -> None:
    rows = [{5: Row(-0.1, 1)}, {6: Row(-2.0, 2), 9: Row(-0.2, 1)}, {7: Row(-0.1, 1)}]
    assert vv.greedy_verdict([5, 6, 7], rows, bonus=3) == Verdict(1, 9)
    assert vv.greedy_verdict([5], rows[:1], bonus=3) == Verdict(1, 3)
    with pytest.raises(ValueError, match="rows"):
        vv.draft_rows([None, {5: Row(0, 1)}], 1, 2)


def test_the_residual_drawn_by_rejection_from_p_follows_max_p_minus_q() -> None:
    """Candidates y ~ p kept with probability (p(y) - q(y))+ / p(y): the kept ones follow
    normalize(max(0, p - q)); keeping every candidate (plain p) fails the same fit."""
    from scipy.stats import chisquare

    rng = np.random.default_rng(3)
    p, q = np.array([0.5, 0.3, 0.15, 0.05]), np.array([0.1, 0.6, 0.1, 0.2])
    residual = np.maximum(p - q, 0) / np.maximum(p - q, 0).sum()
    kept, plain = np.zeros(4), np.zeros(4)
    for _ in range(4000):
        while True:
            y = int(rng.choice(4, p=p))
            if vv.keep_candidate(float(p[y]), float(q[y]), rng):
                break
        kept[y] += 1
        plain[int(rng.choice(4, p=p))] += 1
    assert kept[residual == 0].sum() == 0
    on = residual > 0
    assert chisquare(kept[on], residual[on] * kept.sum()).pvalue > vs.ALPHA
    assert chisquare(plain[on], residual[on] * plain[on].sum()).pvalue < vs.ALPHA


@pytest.fixture(scope="module")
def cloud():
    with tempfile.TemporaryDirectory(prefix="tandem-vllm-") as d:
        # /metrics on a port the node picks (0), read back from its log: a port chosen here
        # and released could be handed to the node's own gRPC server meanwhile
        with vs.VllmCloud(Path(d), "--metrics-port", "0") as node:
            yield node


def _metrics_address(log: Path) -> str:
    import json

    for line in log.read_text(errors="replace").splitlines():
        if '"metrics_listening"' in line:
            return str(json.loads(line)["address"])
    raise AssertionError(f"no metrics_listening line in {log}")


@pytest.fixture(scope="module")
def tok():
    return vs.hf_target()[1]  # SmolLM2's tokenizer, through transformers


@needs_vllm
def test_the_node_advertises_vllm_and_its_tokenizer(cloud, tok) -> None:
    from models.fingerprint import fingerprint

    values = asyncio.run(vs.metrics(cloud.address))
    assert values["vllm_tensor_parallel_size"] == 1.0
    assert values["vllm_pipeline_parallel_size"] == 1.0
    reply = asyncio.run(vs.generate(cloud.address, vs.prompt_ids(tok, vs.QUESTIONS[0]), 4))
    assert reply.tokenizer == fingerprint(tok)  # token speculation with the export is allowed
    # Prometheus /metrics reads the same engine values at scrape time
    import urllib.request

    url = f"http://{_metrics_address(cloud.log)}/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    line = next(
        x for x in text.splitlines() if x.startswith('tandem_cloud_engine{name="vllm_requests"')
    )
    assert float(line.rsplit(" ", 1)[1]) >= 1.0  # the Generate above


@needs_vllm
def test_cloud_only_generation_is_batched_and_repeatable(cloud, tok) -> None:
    prompts = [vs.prompt_ids(tok, q) for q in vs.QUESTIONS[:4]]

    async def run() -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
        alone = [list((await vs.generate(cloud.address, p, 12)).tokens) for p in prompts]
        together = await asyncio.gather(*(vs.generate(cloud.address, p, 12) for p in prompts))
        warm = SamplingParams(0.9, 0.95, 7)
        sampled = await asyncio.gather(
            *(vs.generate(cloud.address, prompts[0], 12, warm) for _ in range(2))
        )
        return alone, [list(r.tokens) for r in together], [list(r.tokens) for r in sampled]

    alone, together, sampled = asyncio.run(run())
    assert all(len(t) == 12 or t[-1] == 2 for t in alone)
    assert together == alone  # continuous batching changes no greedy output
    assert sampled[0] == sampled[1]  # one seed, one sample
    assert len({tuple(t) for t in alone}) == 4


@needs_vllm
def test_greedy_speculation_equals_vllm_greedy_generation(cloud, tok) -> None:
    """A layer-skip drafter (SmolLM2's first 12 of 30 layers, transformers, this process)
    drafts; the text equals what vLLM generates greedily alone."""
    from edge_node.clouds import CloudDirectory
    from edge_node.spec_types import SpecSettings
    from edge_node.speculation import Speculator
    from models.hf_backend import layer_skip_drafter
    from node_runtime.kinds import KPolicy

    drafter = layer_skip_drafter(vs.hf_target()[0], 12)
    prompts = [vs.prompt_ids(tok, q) for q in vs.QUESTIONS[:2]]

    async def run() -> tuple[list[list[int]], list[list[int]], int]:
        clouds = CloudDirectory("test-edge", static=[cloud.address])
        spec = Speculator(drafter, tokenizer=tok)
        outs, refs, kept = [], [], 0
        try:
            s = SpecSettings(max_new=32, eos_id=tok.eos_id, k=4, k_policy=KPolicy.FIXED)
            for i, p in enumerate(prompts):
                # the second prompt is generated first: its rounds then find context and drafts
                # in vLLM's prefix cache and are decided by one-token requests per position
                if i:
                    refs.append(list((await vs.generate(cloud.address, p, 32)).tokens))
                r = await spec.run(p, SamplingParams(0.0), s, clouds.pick)
                if not i:
                    refs.append(list((await vs.generate(cloud.address, p, 32)).tokens))
                outs.append(r.tokens)
                kept += r.account.accepted_tokens
        finally:
            await clouds.close()
            spec.pool.shutdown()
        return outs, refs, kept

    before = asyncio.run(vs.metrics(cloud.address))
    outs, refs, kept = asyncio.run(run())
    after = asyncio.run(vs.metrics(cloud.address))
    assert outs == refs
    assert 0 < kept < len(outs[0]) + len(outs[1])  # drafts were kept, and some corrected
    covered = after["vllm_cache_covered_rounds"] - before["vllm_cache_covered_rounds"]
    assert 0 < covered < after["rounds"] - before["rounds"]  # both ways of scoring ran


@needs_vllm
@pytest.mark.parametrize(
    ("params", "n"), [(SamplingParams(0.8, 0.95), 200), (SamplingParams(1.0), 200)]
)
def test_sampled_verification_through_vllm_follows_the_target(cloud, tok, params, n) -> None:
    """Drafts from a q far from p (half its mass on a token p finds unlikely): the first token
    the cloud emits follows p (transformers' reading of the same checkpoint); a verifier that
    keeps every draft (its output is the drafts) fails the same check. Temperature 0.8 with
    top-p goes through per-position requests, temperature 1 through prompt logprobs."""
    prompt = vs.prompt_ids(tok, vs.QUESTIONS[5])
    p = vs.target_first(prompt, params)
    q = vs.skewed_q(p)
    before = asyncio.run(vs.metrics(cloud.address))
    pairs = asyncio.run(vs.first_tokens(cloud.address, prompt, params, q, n, seed=n))
    after = asyncio.run(vs.metrics(cloud.address))
    emitted = [e for _, e in pairs]
    drafts = [x for x, _ in pairs]
    assert vs.fit_pvalue(emitted, p) > vs.ALPHA
    assert vs.fit_pvalue(drafts, p) < vs.ALPHA  # the negative control: keeping every draft
    assert any(e != x for x, e in pairs)  # rejections happened and were resampled
    assert after["vllm_residual_draws"] > before["vllm_residual_draws"]
    assert after["vllm_residual_fallbacks"] == before["vllm_residual_fallbacks"]  # all exact


@needs_vllm
def test_bad_rounds_are_refused_with_a_status(cloud) -> None:
    async def run() -> grpc.StatusCode:
        async with aio_channel(cloud.address) as ch:
            call = pb_grpc.CloudStub(ch).Speculate(timeout=60)
            s = pb.Sampling(temperature=0.7)
            opened = pb.OpenSession(session_id="a", prompt=[1, 2], sampling=s)
            await call.write(pb.SpecRequest(open=opened))
            await call.read()
            v = pb.VerifyRequest(session_id="a", round_id=1, base_position=2, draft=[5])
            await call.write(pb.SpecRequest(verify=v))  # sampled, but no q
            try:
                await call.read()
            except grpc.aio.AioRpcError as err:
                return err.code()
            return grpc.StatusCode.OK

    assert asyncio.run(run()) == grpc.StatusCode.INVALID_ARGUMENT
    assert np.isfinite(asyncio.run(vs.metrics(cloud.address))["rejected_requests"])
