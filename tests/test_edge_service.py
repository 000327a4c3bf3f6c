"""The Edge service on 127.0.0.1: every mode, bad input, and degradation without a cloud."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Coroutine
from typing import Any

import grpc
import pytest

from cloud_node.node import start_cloud
from edge_node.node import EdgeNodeConfig, start_edge
from models import task
from models.torch_backend import load_torch
from node_runtime.serving import aio_channel
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 90))


async def _solve_all(requests: list[pb.SolveRequest], with_cloud: bool = True) -> list[Any]:
    target, drafter = load_torch("target"), load_torch("drafter")
    tok = task.WordTokenizer()
    cloud = await start_cloud(target, tok.eos_id) if with_cloud else None
    clouds = (cloud.address,) if cloud else ("127.0.0.1:1",)  # port 1: nothing listens
    edge = await start_edge(drafter, tok, EdgeNodeConfig(clouds=clouds))
    out: list[Any] = []
    try:
        async with aio_channel(edge.address) as ch:
            stub = pb_grpc.EdgeStub(ch)
            for r in requests:
                try:
                    out.append(await stub.Solve(r, timeout=60))
                except grpc.aio.AioRpcError as exc:
                    out.append(exc)
            out.append(await stub.Metrics(pb.MetricsRequest(), timeout=5))
    finally:
        await edge.stop()
        if cloud:
            await cloud.stop()
    return out


def test_every_mode_solves_and_speculation_matches_cloud_only() -> None:
    problems = task.generate(6, task.HELDOUT_SEED)
    reqs = [
        pb.SolveRequest(prompt=p.question, mode=m, max_new_tokens=48)
        for p in problems
        for m in (pb.MODE_CLOUD_ONLY, pb.MODE_EDGE_ONLY, pb.MODE_TOKEN_SPECULATION)
    ]
    *replies, metrics = run(_solve_all(reqs))
    for i, p in enumerate(problems):
        cloud, edge, spec = replies[3 * i : 3 * i + 3]
        assert spec.text == cloud.text  # lossless: same greedy output as the target alone
        assert task.is_correct(p, cloud.text)
        assert spec.mode == pb.MODE_TOKEN_SPECULATION and not spec.degraded
        assert spec.account.verify_rounds > 0 and spec.account.cloud_model_cpu_s > 0
        assert edge.account.verify_rounds == 0 and edge.account.cloud_model_cpu_s == 0
        assert spec.account.bytes_sent > 0 and spec.account.ttft_s <= spec.account.wall_s
    assert metrics.values["requests"] == len(reqs)
    assert 0 < metrics.values["acceptance_rate"] <= 1


@pytest.mark.parametrize(
    ("request_", "words"),
    [
        (pb.SolveRequest(prompt=""), "prompt"),
        (pb.SolveRequest(prompt="Q 1 + dog ?"), "unknown word 'dog'"),
        (pb.SolveRequest(prompt="Q 1 ?", sampling=pb.Sampling(temperature=-1)), "temperature"),
        (pb.SolveRequest(prompt="Q 1 ?", sampling=pb.Sampling(top_p=1.5)), "top_p"),
        (pb.SolveRequest(prompt="Q 1 ?", max_new_tokens=100_000), "max_new_tokens"),
        (pb.SolveRequest(prompt="Q 1 ?", draft_length=99), "draft_length"),
        (pb.SolveRequest(prompt="Q 1 ?", k_policy="magic"), "k_policy"),
        (pb.SolveRequest(prompt=" ".join(["1"] * 80)), "no room"),
    ],
)
def test_bad_requests_get_invalid_argument_naming_the_field(request_, words) -> None:
    bad, good, _ = run(_solve_all([request_, pb.SolveRequest(prompt="Q 5 + 1 * 2 - 3 ?")]))
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in bad.details()
    assert good.text.endswith("A 9")  # the node kept serving


def test_without_a_cloud_the_edge_degrades_and_says_so() -> None:
    reqs = [
        pb.SolveRequest(prompt="Q 5 + 1 * 2 - 3 ?", mode=m)
        for m in (pb.MODE_TOKEN_SPECULATION, pb.MODE_CLOUD_ONLY)
    ]
    spec, cloud, metrics = run(_solve_all(reqs, with_cloud=False))
    for r in (spec, cloud):
        assert r.degraded and r.mode == pb.MODE_EDGE_ONLY
        assert "127.0.0.1:1" in r.note
        assert r.text.startswith("5 + 1 = 6 ;")
    assert metrics.values["degraded"] == 2


def test_the_edge_node_runs_without_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import edge_node.node, edge_node.service, edge_node.speculation\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr
