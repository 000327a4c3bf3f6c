"""An agent loop on the edge: each model step runs through collaborative inference, each tool call
runs here, on the device, and its result is fed back into the conversation.

The loop speaks OpenAI's chat shape, so the same loop drives the edge node in process (a
``ChatModel`` over the node's own API handlers, no HTTP) or any OpenAI-compatible endpoint over
HTTP (the edge's API on localhost, or the coordinator's front door).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from node_runtime.openai_api.server import OpenAIApi
from node_runtime.serving import log_event

log = logging.getLogger("tandem.edge.agent")
Message = dict[str, Any]


class ChatModel(Protocol):
    """One chat completion: OpenAI request body in, response body out."""

    async def create(self, body: dict[str, Any]) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Tool:
    """A function the agent may call, run on the device."""

    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema of the arguments object
    run: Callable[[dict[str, Any]], str | Awaitable[str]]

    def spec(self) -> dict[str, Any]:
        """The OpenAI ``tools`` entry."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


@dataclass
class Step:
    """One model step: what it said or called, what the tools answered, where it ran."""

    content: str | None
    calls: list[tuple[str, dict[str, Any], str]] = field(default_factory=list)  # name, args, out
    account: dict[str, Any] = field(default_factory=dict)


@dataclass
class AgentResult:
    """The agent's final answer and its path there."""

    answer: str | None  # None when it ran out of steps
    steps: list[Step]
    messages: list[Message]

    @property
    def tool_calls(self) -> int:
        """Tool calls made on the way."""
        return sum(len(s.calls) for s in self.steps)


class LocalChat:
    """The edge node's API handlers in process: no HTTP, same checks, same templates."""

    def __init__(self, api: OpenAIApi) -> None:
        self.api = api

    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        """A chat completion."""
        return await self.api.create(body)


class HttpChat:
    """Any OpenAI-compatible endpoint (``base_url`` ends in /v1)."""

    def __init__(self, base_url: str, api_key: str = "", timeout_s: float = 300.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        """A chat completion; RuntimeError carrying the API's error message."""
        async with aiohttp.ClientSession(timeout=self.timeout) as session:
            url = f"{self.base_url}/chat/completions"
            async with session.post(url, json=body, headers=self.headers) as r:
                out: dict[str, Any] = await r.json()
                if r.status != 200:
                    raise RuntimeError(f"{r.status}: {out.get('error', {}).get('message', out)}")
                return out


class AgentLoop:
    """Calls the model, runs the tools it asks for, feeds their results back, until it answers."""

    def __init__(
        self,
        model: ChatModel,
        tools: Sequence[Tool],
        model_name: str = "tandem",
        max_steps: int = 16,
        request: dict[str, Any] | None = None,  # more body fields: temperature, mode, ...
    ) -> None:
        self.model, self.model_name, self.max_steps = model, model_name, max_steps
        self.tools = {t.name: t for t in tools}
        self.request = dict(request or {})

    async def run(self, messages: Sequence[Message]) -> AgentResult:
        """Run to the model's answer or ``max_steps`` model steps."""
        history = [dict(m) for m in messages]
        steps: list[Step] = []
        for _ in range(self.max_steps):
            body = {
                **self.request,
                "model": self.model_name,
                "messages": history,
                "tools": [t.spec() for t in self.tools.values()],
            }
            reply = await self.model.create(body)
            message = reply["choices"][0]["message"]
            step = Step(message.get("content"), account=reply.get("tandem") or {})
            steps.append(step)
            calls = message.get("tool_calls") or []
            history.append({k: v for k, v in message.items() if v is not None})
            if not calls:
                return AgentResult(step.content, steps, history)
            for call in calls:
                name, out, args = await self._call(call)
                step.calls.append((name, args, out))
                history.append({"role": "tool", "tool_call_id": call["id"], "content": out})
            log_event(log, "agent_step", logging.DEBUG, calls=[c[0] for c in step.calls])
        return AgentResult(None, steps, history)

    async def _call(self, call: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
        """Run one tool call; a bad call is answered with an error text the model sees."""
        fn = call.get("function") or {}
        name = str(fn.get("name", ""))
        try:
            args = json.loads(fn.get("arguments") or "{}")
        except json.JSONDecodeError as exc:
            return name, f"error: arguments are not JSON: {exc}", {}
        tool = self.tools.get(name)
        if tool is None:
            return name, f"error: no tool named {name!r}", args
        try:
            out = tool.run(args)
            if not isinstance(out, str):
                out = await out
        except Exception as exc:  # a tool's failure is the model's to handle, not the loop's
            return name, f"error: {exc}", args
        return name, out, args
