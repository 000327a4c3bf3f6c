"""tandem.client against a real cluster on 127.0.0.1: generate, stream, reason, status."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from openai_support import EdgeCluster

from models import task
from tandem.client import AsyncClient, Client
from tandem.status_table import render


@pytest.fixture(scope="module")
def cluster() -> Iterator[EdgeCluster]:
    c = EdgeCluster(front_door=True)
    yield c
    c.close()


def test_generate_and_stream_agree_and_are_lossless(cluster: EdgeCluster) -> None:
    problems = task.generate(3, task.HELDOUT_SEED)
    with Client(cluster.coordinator_address) as tandem:
        for p in problems:
            spec = tandem.generate(p.question, mode="speculation", k_policy="fixed", draft_length=4)
            alone = tandem.generate(p.question, mode="cloud-only")
            pieces = list(tandem.stream(p.question, mode="speculation"))
            assert spec.text == alone.text and task.is_correct(p, spec.text)
            assert spec.mode == "speculation" and alone.mode == "cloud-only"
            assert spec.edge == cluster.edge.address and spec.cloud
            assert 0 < spec.account["accepted_tokens"] <= spec.account["drafted_tokens"]
            assert spec.acceptance_rate is not None and alone.acceptance_rate is None
            *text, last = pieces
            assert len(text) > 1 and "".join(t.text for t in text) == spec.text
            assert last.result is not None and last.result.text == spec.text
        edge = tandem.generate(problems[0].question, mode="edge-only")
        assert edge.mode == "edge-only" and edge.account["cloud_model_cpu_s"] == 0
        with pytest.raises(TypeError, match="unknown options"):
            tandem.generate("Q 1 + 2 * 3 - 4 ?", colour="blue")


def test_reason_runs_step_speculation_on_an_edge(cluster: EdgeCluster) -> None:
    p = task.generate(1, task.HELDOUT_SEED)[0]
    with Client(cluster.coordinator_address) as tandem:
        r = tandem.reason(p.question, strategy="specreason")
    assert r.steps and r.account["drafted_steps"] >= r.account["accepted_steps"]
    assert task.is_correct(p, r.text)


def test_status_lists_every_node_with_its_figures(cluster: EdgeCluster) -> None:
    async def main() -> list:
        async with AsyncClient(cluster.coordinator_address) as tandem:
            await tandem.generate("Q 17 + 5 * 3 - 4 ?", mode="speculation")
            return await tandem.status()

    nodes = asyncio.run(main())
    by_role = {n.role: n for n in nodes}
    assert set(by_role) == {"edge", "cloud"} and not any(n.error for n in nodes)
    edge = by_role["edge"]
    assert edge.node_id == "edge-a" and edge.values["requests"] >= 1
    ((pair, rate),) = edge.acceptance.items()
    assert pair.startswith("drafter->") and 0 < rate <= 1
    assert by_role["cloud"].values["rounds"] >= 1
    table = render(nodes)
    assert "edge-a" in table and "cloud-a" in table and "acceptance" in table
