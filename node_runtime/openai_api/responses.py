"""OpenAI response bodies and stream chunks, and Tandem's account as their extension field."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from node_runtime.kinds import Mode
from node_runtime.openai_api.templates import Parsed
from tandem_wire.v1 import tandem_pb2 as pb

EXTENSION = "tandem"  # the response field that carries where the request ran and what it cost


@dataclass
class ChoiceResult:
    """One finished choice: its text or tool calls, why it ended, and its account."""

    index: int
    parsed: Parsed
    finish_reason: str
    completion_tokens: int
    prompt_tokens: int
    account: dict[str, Any] = field(default_factory=dict)


def new_id(chat: bool) -> str:
    """``chatcmpl-...`` or ``cmpl-...``."""
    return f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"


def account(
    reply: pb.SolveReply | None, edge: str, template: str, stop: str | None
) -> dict[str, Any]:
    """Where a generation ran and what it cost; ``reply`` None when a stop sequence cut it."""
    if reply is None:
        return {"complete": False, "stop": stop, "chat_template": template or None}
    a = reply.account
    mode = Mode.from_wire(reply.mode)
    return {
        "complete": True,
        "mode": mode.value if mode is not None else None,
        "edge_node": edge,
        "cloud_node": reply.cloud_node or None,
        "degraded": reply.degraded,
        "note": reply.note or None,
        "drafted_tokens": a.drafted_tokens,
        "accepted_tokens": a.accepted_tokens,
        "acceptance_rate": a.accepted_tokens / a.drafted_tokens if a.drafted_tokens else None,
        "verify_rounds": a.verify_rounds,
        "cloud_model_cpu_s": a.cloud_model_cpu_s,
        "edge_model_s": a.edge_model_s,
        "wall_s": a.wall_s,
        "ttft_s": a.ttft_s,
        "bytes_sent": a.bytes_sent,
        "bytes_received": a.bytes_received,
        "chat_template": template or None,
        "stop": stop,
    }


def reason_account(reply: pb.ReasonReply, strategy: str) -> dict[str, Any]:
    """The account of a reasoning request."""
    a = reply.account
    return {
        "complete": True,
        "reasoning": strategy,
        "answer": reply.answer,
        "steps": list(reply.steps),
        "drafted_tokens": a.drafted_tokens,
        "drafted_steps": a.drafted_steps,
        "accepted_steps": a.accepted_steps,
        "scorer_calls": a.scorer_calls,
        "cloud_tokens": a.cloud_tokens,
        "bytes_sent": a.bytes_sent,
        "bytes_received": a.bytes_received,
        "wall_s": a.wall_s,
    }


def usage(choices: list[ChoiceResult]) -> dict[str, int]:
    """OpenAI's usage object over every choice (the prompt counted once)."""
    prompt = max((c.prompt_tokens for c in choices), default=0)
    completion = sum(c.completion_tokens for c in choices)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def tool_calls_json(parsed: Parsed) -> list[dict[str, Any]]:
    """The message's ``tool_calls``."""
    return [
        {
            "id": call.id or f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": call.name, "arguments": call.arguments},
        }
        for call in parsed.tool_calls
    ]


def extension(choices: list[ChoiceResult]) -> dict[str, Any]:
    """The account: the one choice's, or every choice's under ``choices``."""
    if len(choices) == 1:
        return choices[0].account
    return {"choices": [c.account for c in choices]}


def chat_response(rid: str, model: str, choices: list[ChoiceResult]) -> dict[str, Any]:
    """A ``chat.completion``."""
    out = []
    for c in choices:
        message: dict[str, Any] = {"role": "assistant", "content": c.parsed.content}
        if c.parsed.tool_calls:
            message["tool_calls"] = tool_calls_json(c.parsed)
        out.append(
            {
                "index": c.index,
                "message": message,
                "logprobs": None,
                "finish_reason": c.finish_reason,
            }
        )
    return _response(rid, "chat.completion", model, out, choices)


def completion_response(rid: str, model: str, choices: list[ChoiceResult]) -> dict[str, Any]:
    """A ``text_completion``."""
    out = [
        {
            "index": c.index,
            "text": c.parsed.content or "",
            "logprobs": None,
            "finish_reason": c.finish_reason,
        }
        for c in choices
    ]
    return _response(rid, "text_completion", model, out, choices)


def _response(
    rid: str, obj: str, model: str, out: list[dict[str, Any]], choices: list[ChoiceResult]
) -> dict[str, Any]:
    """What every non-streamed response carries around its rendered ``choices`` (``out``)."""
    return {
        "id": rid,
        "object": obj,
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
        "choices": out,
        "usage": usage(choices),
        EXTENSION: extension(choices),
    }


@dataclass
class Chunker:
    """Builds the stream's chunks: every one with id, object, created, model, choices[].index."""

    rid: str
    model: str
    chat: bool
    created: int = field(default_factory=lambda: int(time.time()))

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "id": self.rid,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": choices,
            **extra,
        }

    def _choice(self, index: int, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        if self.chat:
            return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        text = delta.get("content") or ""
        return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}

    def role(self, index: int) -> dict[str, Any]:
        """The first chunk of a chat choice."""
        return self._chunk([self._choice(index, {"role": "assistant", "content": ""}, None)])

    def text(self, index: int, text: str) -> dict[str, Any]:
        """Content as it comes."""
        return self._chunk([self._choice(index, {"content": text}, None)])

    def tool_calls(self, index: int, parsed: Parsed) -> list[dict[str, Any]]:
        """Each call as two deltas, as OpenAI streams them: its id and name, then its arguments."""
        out = []
        for i, call in enumerate(tool_calls_json(parsed)):
            head = {
                "index": i,
                "id": call["id"],
                "type": "function",
                "function": {"name": call["function"]["name"], "arguments": ""},
            }
            args = {"index": i, "function": {"arguments": call["function"]["arguments"]}}
            out.append(self._chunk([self._choice(index, {"tool_calls": [head]}, None)]))
            out.append(self._chunk([self._choice(index, {"tool_calls": [args]}, None)]))
        return out

    def finish(self, c: ChoiceResult, with_account: bool) -> dict[str, Any]:
        """The choice's last chunk (with its account unless a usage chunk carries it)."""
        extra = {EXTENSION: c.account} if with_account else {}
        return self._chunk([self._choice(c.index, {}, c.finish_reason)], **extra)

    def usage(self, choices: list[ChoiceResult]) -> dict[str, Any]:
        """The usage chunk (``stream_options.include_usage``): no choices, usage and account."""
        return self._chunk([], usage=usage(choices), **{EXTENSION: extension(choices)})
