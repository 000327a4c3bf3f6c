"""Benchmarks of real-checkpoint drafters on the bundled prompt set (``models.prompts``).

- ``export_bench``: a checkpoint's transformers fp32 path against its ONNX fp32 and int8 exports:
  decode ms per token (one token per call, as a drafter runs), prefill, and greedy agreement with
  transformers fp32 (teacher-forced along its greedy path, and whole outputs).
- ``uad_bench``: a target alone against the target with a drafter of another family drafting as
  text (``models.uad``): ms per generated token, acceptance, mean accepted length, and whether the
  output equals the target's own greedy output.

Configurations run in turns (``tandem.repeats.interleaved``), each repeat over every prompt;
figures are medians with their min-max range. Nothing here is emulated: real models, this CPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from models.base import CausalLM, Tokenizer
from models.prompts import Prompt, plain
from models.uad import start_ids, uad_generate
from tandem.repeats import Spread, Target, interleaved, paired_ratios

SPEEDUP_TARGET = Target(">=", 2.0)  # ONNX int8 vs transformers fp32, decode ms per token
AGREEMENT_TARGET = Target(">=", 0.95)  # greedy agreement with transformers fp32


@dataclass(frozen=True)
class Timed:
    """One greedy generation with its timings."""

    tokens: list[int]
    prefill_s: float  # the prompt's one call
    decode_s: float  # every later call, one token each
    decode_calls: int


def greedy_timed(lm: CausalLM, prompt: Sequence[int], max_new: int, eos: int) -> Timed:
    """Greedy decoding, prompt in one call and one token per call after it, timed apart."""
    s = lm.session()
    t0 = time.perf_counter()
    logits = s.extend(list(prompt))[-1]
    t1 = time.perf_counter()
    out: list[int] = []
    calls = 0
    while True:
        tok = int(np.argmax(logits))
        out.append(tok)
        if tok == eos or len(out) >= max_new:
            break
        logits = s.extend([tok])[-1]
        calls += 1
    return Timed(out, t1 - t0, time.perf_counter() - t1, calls)


def render(tok: Tokenizer, prompt: Prompt, chat: bool) -> str:
    """The prompt as the model expects it: its chat template when asked and present, else plain."""
    inner: Any = getattr(tok, "tokenizer", None)
    if chat and getattr(inner, "chat_template", None):
        msgs = [{"role": "user", "content": prompt.text}]
        return str(inner.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False))
    return plain(prompt)


def agreement(lm: CausalLM, paths: Sequence[tuple[list[int], int]]) -> float:
    """Share of generated positions where ``lm``'s argmax is the reference path's next token."""
    agree = total = 0
    for seq, n in paths:
        pred = lm.session().extend(seq[:-1]).argmax(-1)[n - 1 :]
        agree += int((pred == np.asarray(seq[n:])).sum())
        total += len(seq) - n
    return agree / total if total else float("nan")


def _sweep(
    lm: CausalLM, prompts: Sequence[list[int]], max_new: int, eos: int, bar: tqdm
) -> dict[str, Any]:
    runs = []
    for ids in prompts:
        runs.append(greedy_timed(lm, ids, max_new, eos))
        bar.update()
    calls = sum(r.decode_calls for r in runs)
    return {
        "decode_ms_per_token": 1e3 * sum(r.decode_s for r in runs) / max(calls, 1),
        "prefill_ms": 1e3 * float(np.median([r.prefill_s for r in runs])),
        "outputs": [r.tokens for r in runs],
    }


def export_bench(
    models: dict[str, CausalLM],
    reference: str,
    tok: Tokenizer,
    prompts: Sequence[Prompt],
    max_new: int,
    repeats: int,
) -> dict[str, Any]:
    """Figures of each model in ``models`` against ``models[reference]`` (transformers fp32)."""
    ids = [tok.encode(render(tok, p, chat=True)) for p in prompts]
    bar = tqdm(total=repeats * len(models) * len(ids), desc="export bench", unit="prompt")
    runs = interleaved(
        {name: _bound(_sweep, lm, ids, max_new, tok.eos_id, bar) for name, lm in models.items()},
        repeats,
    )
    bar.close()
    ref_out = runs[reference][0]["outputs"]
    paths = [([*p, *o], len(p)) for p, o in zip(ids, ref_out, strict=True)]
    ref_ms = [r["decode_ms_per_token"] for r in runs[reference]]
    rows: dict[str, Any] = {}
    for name, lm in models.items():
        ms = [r["decode_ms_per_token"] for r in runs[name]]
        outs = runs[name][0]["outputs"]
        rows[name] = {
            "decode_ms_per_token": Spread.of(ms).as_dict(),
            "prefill_ms": Spread.of([r["prefill_ms"] for r in runs[name]]).as_dict(),
            "speedup_vs_reference": Spread.of(paired_ratios(ref_ms, ms)).as_dict(),
            "greedy_agreement": agreement(lm, paths),
            "same_output": float(np.mean([a == b for a, b in zip(outs, ref_out, strict=True)])),
            "deterministic": all(r["outputs"] == outs for r in runs[name]),
        }
    return {
        "reference": reference,
        "prompts": len(prompts),
        "max_new": max_new,
        "repeats": repeats,
        "positions": sum(len(o) for o in ref_out),
        "rows": rows,
    }


def uad_bench(
    target: tuple[CausalLM, Tokenizer],
    drafter: tuple[CausalLM, Tokenizer],
    prompts: Sequence[Prompt],
    max_new: int,
    k: int,
    repeats: int,
) -> dict[str, Any]:
    """The target alone against universal assisted decoding with ``drafter``, greedy."""
    (t_lm, t_tok), (d_lm, d_tok) = target, drafter
    texts = [plain(p) for p in prompts]
    ids = [start_ids(t_tok, x) for x in texts]
    prefix = start_ids(d_tok, "")
    bar = tqdm(total=repeats * 2 * len(ids), desc="uad bench", unit="prompt")

    def alone() -> dict[str, Any]:
        t0, outs = time.perf_counter(), []
        for p in ids:
            outs.append(greedy_timed(t_lm, p, max_new, t_tok.eos_id).tokens)
            bar.update()
        n = sum(len(o) for o in outs)
        return {"ms_per_token": 1e3 * (time.perf_counter() - t0) / n, "outputs": outs}

    def uad() -> dict[str, Any]:
        t0, outs, acc, drafted, rounds = time.perf_counter(), [], 0, 0, 0
        for x, p in zip(texts, ids, strict=True):
            r = uad_generate(t_lm, t_tok, d_lm, d_tok, x, p, max_new, k=k, drafter_prefix=prefix)
            outs.append(r.tokens)
            acc, drafted, rounds = acc + r.accepted, drafted + r.drafted, rounds + r.rounds
            bar.update()
        n = sum(len(o) for o in outs)
        return {
            "ms_per_token": 1e3 * (time.perf_counter() - t0) / n,
            "outputs": outs,
            "acceptance": acc / max(drafted, 1),
            "mean_accepted_length": 1 + acc / max(rounds, 1),
        }

    runs = interleaved({"target alone": alone, f"uad k={k}": uad}, repeats)
    bar.close()
    base = runs["target alone"]
    rows: dict[str, Any] = {}
    for name, rs in runs.items():
        ms = [r["ms_per_token"] for r in rs]
        rows[name] = {
            "ms_per_token": Spread.of(ms).as_dict(),
            "speedup_vs_target_alone": Spread.of(
                paired_ratios([b["ms_per_token"] for b in base], ms)
            ).as_dict(),
            "lossless": all(r["outputs"] == base[0]["outputs"] for r in rs),
            "acceptance": rs[0].get("acceptance"),
            "mean_accepted_length": rs[0].get("mean_accepted_length"),
        }
    return {
        "target": t_lm.name,
        "drafter": d_lm.name,
        "k": k,
        "prompts": len(prompts),
        "max_new": max_new,
        "repeats": repeats,
        "rows": rows,
    }


def _bound(fn: Callable[..., Any], *args: Any) -> Callable[[], Any]:
    return lambda: fn(*args)
