"""A calculator agent on the bundled task, its every model step run through collaborative inference.

The bundled models speak one language only, the synthetic arithmetic task (README, "The bundled
models"): asked ``Q 17 + 5 * 3 - 4 ?`` they write ``17 + 5 = 22 ; 22 * 3 = 66 ; ...; A 62``. Their
chat template (node_runtime.openai_api.templates, ``task``) turns each step they start into a call
of the tool offered, ``calculator({"expression": "17 + 5"})``; the agent loop on the edge runs the
tool exactly and feeds the result back, and the model goes on from the completed step. So the
model chooses the operations and the tool does the arithmetic. Nothing here understands English.

    python examples/calculator_agent.py                  # starts a cloud and an edge in process
    python examples/calculator_agent.py --api http://127.0.0.1:8000/v1   # a running `tandem up`

It prints one problem step by step, then the accuracy over held-out problems of the drafter alone,
the drafter with the calculator (edge-only), and the target with the calculator (speculation).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from edge_node.agent_loop import AgentLoop, ChatModel, HttpChat, LocalChat, Tool
from models import task


def calculator(args: dict[str, Any]) -> str:
    """Exact arithmetic of the task: ``a op b`` modulo 100."""
    a, op, b = str(args["expression"]).split()
    return str(task.apply(op, int(a), int(b)))


CALCULATOR = Tool(
    "calculator",
    "exact arithmetic modulo 100 of one 'a op b' expression (op: + - *)",
    {
        "type": "object",
        "properties": {"expression": {"type": "string"}},
        "required": ["expression"],
    },
    calculator,
)


async def accuracy(model: ChatModel, name: str, problems: list[task.Problem], **body: Any) -> float:
    """Share of problems the agent answers right, with the calculator (or without: no tools)."""
    tools = [] if body.pop("no_tools", False) else [CALCULATOR]
    loop = AgentLoop(model, tools, name, request={"temperature": 0, **body})
    right = 0
    for p in problems:
        result = await loop.run([{"role": "user", "content": p.question}])
        right += result.answer is not None and task.is_correct(p, result.answer)
    return right / len(problems)


async def show(model: ChatModel, name: str, p: task.Problem) -> None:
    """One problem, step by step."""
    loop = AgentLoop(model, [CALCULATOR], name, request={"temperature": 0, "mode": "speculation"})
    result = await loop.run([{"role": "user", "content": p.question}])
    print(f"user: {p.question}")
    for step in result.steps:
        for tool, args, out in step.calls:
            where = step.account.get("mode"), step.account.get("acceptance_rate")
            print(f"  model -> {tool}({args['expression']!r}) = {out}   [{where[0]}, a={where[1]}]")
    verdict = "right" if task.is_correct(p, result.answer or "") else "wrong"
    print(f"  answer: {result.answer} ({verdict})")


async def run_all(model: ChatModel, name: str, n: int) -> None:
    problems = task.generate(n, task.HELDOUT_SEED)
    await show(model, name, problems[0])
    alone = await accuracy(
        model, name, problems, mode="edge-only", quality_floor="any", no_tools=True
    )
    edge = await accuracy(model, name, problems, mode="edge-only", quality_floor="any")
    spec = await accuracy(model, name, problems, mode="speculation")
    print(f"\naccuracy over {n} held-out problems")
    print(f"  drafter alone (edge-only, no tool)         {alone:.2f}")
    print(f"  drafter + calculator (edge-only)           {edge:.2f}")
    print(f"  target + calculator (speculation, lossless) {spec:.2f}")


async def in_process(n: int) -> None:
    """A cloud with the bundled target and an edge with the bundled drafter, on loopback."""
    from cloud_node.node import start_cloud
    from edge_node.node import EdgeNodeConfig, start_edge
    from models.torch_backend import load_torch
    from node_runtime.openai_api.backend import EdgeBackend
    from node_runtime.openai_api.server import ApiConfig, OpenAIApi

    tok = task.WordTokenizer()
    cloud = await start_cloud(load_torch("target"), tok.eos_id)
    edge = await start_edge(load_torch("drafter"), tok, EdgeNodeConfig(clouds=(cloud.address,)))
    backend = EdgeBackend(edge.address, "drafter")
    try:
        await run_all(LocalChat(OpenAIApi(backend, ApiConfig())), "drafter", n)
    finally:
        await backend.close()
        await edge.stop()
        await cloud.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--api", default="", help="an OpenAI-compatible API root (…/v1)")
    parser.add_argument("--model", default="tandem")
    parser.add_argument("--problems", type=int, default=40)
    args = parser.parse_args()
    if args.api:
        asyncio.run(run_all(HttpChat(args.api), args.model, args.problems))
    else:
        asyncio.run(in_process(args.problems))


if __name__ == "__main__":
    main()
