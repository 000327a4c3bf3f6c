"""The agent loop on the edge: tool calls run on the device, results fed back, each model step
through collaborative inference; in process and over the edge's HTTP API."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai_support import EdgeCluster

from edge_node.agent_loop import AgentLoop, ChatModel, HttpChat, LocalChat, Tool
from models import task
from node_runtime.openai_api.backend import EdgeBackend
from node_runtime.openai_api.schema import ApiError
from node_runtime.openai_api.server import ApiConfig, OpenAIApi

SCHEMA = {"type": "object", "properties": {"expression": {"type": "string"}}}


def calculator(args: dict[str, Any]) -> str:
    a, op, b = args["expression"].split()
    return str(task.apply(op, int(a), int(b)))


@pytest.fixture(scope="module")
def cluster() -> Iterator[EdgeCluster]:
    c = EdgeCluster()
    yield c
    c.close()


def _run(
    cluster: EdgeCluster, model: ChatModel, tool: Tool | None, question: str, **body: Any
) -> Any:
    tools = [tool] if tool is not None else []
    loop = AgentLoop(model, tools, "drafter", request={"temperature": 0, **body})
    return cluster.threads.run(loop.run([{"role": "user", "content": question}]))


def _local(cluster: EdgeCluster) -> LocalChat:
    return LocalChat(OpenAIApi(EdgeBackend(cluster.edge.address, "drafter"), ApiConfig()))


def test_every_step_is_a_tool_call_through_speculation(cluster: EdgeCluster) -> None:
    tool = Tool("calculator", "a op b mod 100", SCHEMA, calculator)
    for p in task.generate(3, task.HELDOUT_SEED):
        result = _run(cluster, _local(cluster), tool, p.question, mode="speculation")
        assert task.is_correct(p, result.answer) and result.tool_calls == len(p.ops)
        for step, (op, operand) in zip(result.steps, p.ops, strict=False):
            ((name, args, out),) = step.calls
            assert name == "calculator" and args["expression"].split()[1:] == [op, str(operand)]
        assert all(
            s.account["mode"] == "speculation" and s.account["complete"] for s in result.steps
        )
        assert [m["role"] for m in result.messages][-2:] == ["tool", "assistant"]


def test_the_tool_makes_the_drafter_alone_right_where_it_was_wrong(cluster: EdgeCluster) -> None:
    """Edge-only: the drafter picks the operations, the calculator does the arithmetic."""
    tool = Tool("calculator", "a op b mod 100", SCHEMA, calculator)
    problems = task.generate(12, task.HELDOUT_SEED)
    body = {"mode": "edge-only", "quality_floor": "any"}
    alone = [_run(cluster, _local(cluster), None, p.question, **body) for p in problems]
    wrong = [p for p, r in zip(problems, alone, strict=True) if not task.is_correct(p, r.answer)]
    assert wrong  # the drafter alone gets some wrong (its held-out accuracy is about 0.55)
    helped = [_run(cluster, _local(cluster), tool, p.question, **body) for p in problems]
    right = [task.is_correct(p, r.answer or "") for p, r in zip(problems, helped, strict=True)]
    assert sum(right) > len(problems) - len(wrong)  # more right than the drafter alone


def test_a_failing_tool_is_fed_back_and_the_bundled_template_says_it_reads_numbers_only(
    cluster: EdgeCluster,
) -> None:
    def broken(args: dict[str, Any]) -> str:
        raise ZeroDivisionError("no")

    p = task.generate(1, task.HELDOUT_SEED)[0]
    loop = AgentLoop(
        _local(cluster),
        [Tool("calculator", "", SCHEMA, broken)],
        "drafter",
        request={"temperature": 0, "mode": "speculation"},
    )
    with pytest.raises(ApiError, match="only as a number") as err:
        cluster.threads.run(loop.run([{"role": "user", "content": p.question}]))
    assert err.value.status == 400  # the error text reached the model's next request


def test_over_http_the_loop_gives_what_it_gives_in_process(cluster: EdgeCluster) -> None:
    async def tool_async(args: dict[str, Any]) -> str:
        await asyncio.sleep(0)
        return calculator(args)

    tool = Tool("calculator", "", SCHEMA, tool_async)
    p = task.generate(2, task.HELDOUT_SEED)[1]
    here = _run(cluster, _local(cluster), tool, p.question, mode="speculation")
    there = _run(cluster, HttpChat(cluster.base_url), tool, p.question, mode="speculation")
    assert here.answer == there.answer and here.tool_calls == there.tool_calls
    with pytest.raises(RuntimeError, match="404"):
        loop = AgentLoop(HttpChat(cluster.base_url), [tool], "nope")
        cluster.threads.run(loop.run([{"role": "user", "content": p.question}]))


def test_the_calculator_example_runs_and_reports() -> None:
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, str(root / "examples/calculator_agent.py"), "--problems", "4"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=root,
    ).stdout
    assert "model -> calculator(" in out and "answer: A " in out
    figures = [line.split()[-1] for line in out.splitlines() if "calculator (" in line]
    assert len(figures) == 2 and all(0 <= float(f) <= 1 for f in figures)
