"""Drafts as text over gRPC, measured: an edge of one family speculating for a cloud of another.

``tandem drafters uad --over-grpc``. The target runs in a real cloud node process
(``tandem serve cloud``); the drafter runs in this process as an edge's speculator, over a real
gRPC verify stream. Two configurations, interleaved, on the same cloud node:

- ``cloud-only``: the cloud generates the whole reply (``Generate``), the target alone;
- ``text drafts k=K``: the edge drafts k tokens as text a round, the cloud re-tokenizes and
  verifies them (``edge_node.text_drafts``, ``cloud_node.text_drafts``).

Both are greedy; a reply counts as lossless when its text equals cloud-only's. Times are wall
time per target token (cloud-only's token count), on this machine, where the edge and the cloud
share the cores: not emulated, and not a device split.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from tqdm import tqdm

from edge_node.clouds import CloudDirectory
from edge_node.speculation import SpecSettings, Speculator
from models.base import CausalLM, Tokenizer
from models.prompts import Prompt, plain
from models.sampling import SamplingParams
from models.uad import start_ids
from tandem.cluster import LocalCluster
from tandem.repeats import Spread, interleaved, paired_ratios
from tandem_wire.v1 import tandem_pb2 as pb


async def _cloud_only(directory: CloudDirectory, text: str, max_new: int) -> tuple[str, int]:
    picked = await directory.pick([])
    assert picked is not None, "the cloud node is not answering"
    reply = await picked[1].Generate(
        pb.GenerateRequest(prompt_text=text, max_new_tokens=max_new), timeout=600
    )
    return reply.text, len(reply.tokens)


async def _text_drafts(
    spec: Speculator, directory: CloudDirectory, tok: Tokenizer, text: str, max_new: int, k: int
) -> tuple[str, Any]:
    settings = SpecSettings(max_new=max_new, eos_id=None, k=k, k_max=k, round_timeout_s=600)
    prompt = start_ids(tok, text)
    res = await spec.run(prompt, SamplingParams(0.0), settings, directory.pick)
    if res.degraded:
        raise RuntimeError(f"the request degraded: {res.note}")
    return tok.decode(res.tokens), res.account


def wire_bench(
    target_spec: str,
    drafter: tuple[CausalLM, Tokenizer],
    prompts: Sequence[Prompt],
    max_new: int,
    k: int,
    repeats: int,
    threads: int = 1,
) -> dict[str, Any]:
    """Run both configurations ``repeats`` times, interleaved, against one cloud process."""
    d_lm, d_tok = drafter
    texts = [plain(p) for p in prompts]
    bar = tqdm(total=repeats * 2 * len(texts), desc="text drafts over gRPC", unit="prompt")
    with LocalCluster() as cluster:
        cloud = cluster.start("cloud", "cloud", "--model", target_spec, "--threads", str(threads))
        loop = asyncio.new_event_loop()
        directory = CloudDirectory("edge-uad", static=[cloud.address], timeout_s=600)
        spec = Speculator(d_lm, tokenizer=d_tok)

        def cloud_only() -> dict[str, Any]:
            t0, outs, n = time.perf_counter(), [], 0
            for x in texts:
                out, tokens = loop.run_until_complete(_cloud_only(directory, x, max_new))
                outs.append(out)
                n += tokens
                bar.update()
            return {"s": time.perf_counter() - t0, "outputs": outs, "tokens": n}

        def text_drafts() -> dict[str, Any]:
            t0, outs, acc, drafted, rounds = time.perf_counter(), [], 0, 0, 0
            for x in texts:
                out, a = loop.run_until_complete(
                    _text_drafts(spec, directory, d_tok, x, max_new, k)
                )
                outs.append(out)
                acc, drafted = acc + a.accepted_tokens, drafted + a.drafted_tokens
                rounds += a.verify_rounds
                bar.update()
            return {
                "s": time.perf_counter() - t0,
                "outputs": outs,
                "acceptance": acc / max(drafted, 1),
                "mean_accepted_length": 1 + acc / max(rounds, 1),
            }

        configs = {"cloud-only": cloud_only, f"text drafts k={k}": text_drafts}
        try:  # one untimed request each first: first calls pay one-off costs
            loop.run_until_complete(_cloud_only(directory, texts[0], max_new))
            loop.run_until_complete(_text_drafts(spec, directory, d_tok, texts[0], max_new, k))
            runs = interleaved(configs, repeats)
        finally:
            loop.run_until_complete(directory.close())
            loop.close()
            bar.close()
    base = runs["cloud-only"]
    n = base[0]["tokens"]
    rows: dict[str, Any] = {}
    for name, rs in runs.items():
        ms = [1e3 * r["s"] / n for r in rs]
        rows[name] = {
            "ms_per_token": Spread.of(ms).as_dict(),
            "speedup_vs_target_alone": Spread.of(
                paired_ratios([1e3 * b["s"] / n for b in base], ms)
            ).as_dict(),
            "lossless": all(r["outputs"] == base[0]["outputs"] for r in rs),
            "identical_replies": sum(
                a == b for r in rs for a, b in zip(r["outputs"], base[0]["outputs"], strict=True)
            )
            / (len(rs) * len(texts)),
            "acceptance": rs[0].get("acceptance"),
            "mean_accepted_length": rs[0].get("mean_accepted_length"),
        }
    return {
        "target": target_spec,
        "drafter": d_lm.name,
        "k": k,
        "prompts": len(prompts),
        "max_new": max_new,
        "target_tokens": n,
        "repeats": repeats,
        "transport": "gRPC on 127.0.0.1, cloud node in its own process",
        "rows": rows,
    }
