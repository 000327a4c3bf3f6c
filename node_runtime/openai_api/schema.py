"""OpenAI request bodies, checked: every refusal names its field, in OpenAI's error shape.

What is accepted is what the cluster can honour. Fields that would change the output in ways
Tandem does not implement (penalties, logprobs, JSON modes) are refused with a 400 rather than
ignored; fields that change nothing here (``user``, ``metadata``) are accepted.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import Any

from node_runtime.kinds import KPolicy, Mode, Objective, QualityFloor
from node_runtime.openai_api.backend import Generation, Knobs, Reasoning
from node_runtime.openai_api.templates import Chat

MAX_STOPS = 4  # as OpenAI
MAX_STOP_CHARS = 64
MAX_TOOLS = 64
ROLES = ("system", "developer", "user", "assistant", "tool")
COMMON = {
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "n",
    "stream",
    "stream_options",
    "stop",
    "seed",
    "user",
    "metadata",
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
}
TANDEM = {
    "mode",
    "k_policy",
    "draft_length",
    "objective",
    "quality_floor",
    "cost_weight",
    "pipelined",
    "reasoning",
}
CHAT = COMMON | TANDEM | {"messages", "tools", "tool_choice", "max_completion_tokens"}
CHAT |= {"response_format", "parallel_tool_calls", "top_logprobs", "store"}
COMPLETION = COMMON | TANDEM | {"prompt", "echo", "suffix", "best_of"}


class ApiError(Exception):
    """An error answered in OpenAI's shape with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = (
            status,
            message,
            param,
            code,
            kind,
        )

    def body(self) -> dict[str, Any]:
        """``{"error": {message, type, param, code}}``."""
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }


def bad(param: str, message: str) -> ApiError:
    """A 400 naming ``param``."""
    return ApiError(400, f"{param}: {message}", param=param)


@dataclass(frozen=True)
class ApiRequest:
    """A checked request: the generation, how many, how to stream, where to stop."""

    gen: Generation
    n: int
    stream: bool
    include_usage: bool
    stops: tuple[str, ...]
    tools: tuple[dict[str, Any], ...]
    tool_choice: str  # none, auto, required, or a tool's name
    reasoning: Reasoning | None
    chat: bool


def _number(body: dict[str, Any], name: str, low: float, high: float, default: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise bad(name, f"must be a number, got {value!r}")
    if not low <= value <= high:
        raise bad(name, f"must be {low:g} to {high:g}, got {value}")
    return float(value)


def _int(body: dict[str, Any], name: str, low: int, high: int, default: int) -> int:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(name, f"must be an integer, got {value!r}")
    if not low <= value <= high:
        raise bad(name, f"must be {low} to {high}, got {value}")
    return value


def _enum(body: dict[str, Any], name: str, kind: Any) -> Any:
    value = body.get(name)
    if value is None:
        return None
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(v.value for v in kind)
        raise bad(name, f"{value!r} is not one of {allowed}") from None


def _stops(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad("stop", "must be a string or a list of strings")
    if len(stops) > MAX_STOPS or any(len(s) > MAX_STOP_CHARS for s in stops):
        raise bad("stop", f"at most {MAX_STOPS} sequences of {MAX_STOP_CHARS} characters")
    return tuple(s for s in stops if s)


def _refuse_unsupported(body: dict[str, Any]) -> None:
    for name in ("presence_penalty", "frequency_penalty"):
        if body.get(name) not in (None, 0, 0.0):
            raise bad(name, "not supported: sampling here is temperature, top_p and seed")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise bad("logprobs", "not supported")
    fmt = body.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
        raise bad("response_format", "only {'type': 'text'} is supported")
    if body.get("echo") or body.get("suffix") or body.get("best_of") not in (None, 1):
        raise bad("echo", "echo, suffix and best_of are not supported")


def _knobs(body: dict[str, Any]) -> Knobs:
    try:
        k_policy = KPolicy.parse(body["k_policy"]) if body.get("k_policy") else None
    except ValueError as exc:
        raise bad("k_policy", str(exc).split(": ", 1)[-1]) from None
    pipelined = body.get("pipelined", False)
    if not isinstance(pipelined, bool):
        raise bad("pipelined", "must be a boolean")
    mode, floor = _enum(body, "mode", Mode), _enum(body, "quality_floor", QualityFloor)
    if mode is Mode.EDGE_ONLY and floor is None:
        floor = QualityFloor.ANY  # asking for the drafter alone accepts its quality
    return Knobs(
        mode=mode,
        k_policy=k_policy,
        draft_length=_int(body, "draft_length", 0, 64, 0),
        objective=_enum(body, "objective", Objective) or Objective.LATENCY,
        quality_floor=floor,
        cost_weight=_number(body, "cost_weight", 0, 1e6, 0.0),
        pipelined=pipelined,
    )


def _reasoning(value: Any) -> Reasoning | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("strategy"), str):
        raise bad("reasoning", "must be an object with a strategy (specreason, best_of_n, ...)")
    unknown = set(value) - {"strategy", "budget", "score_budget", "n", "threshold"}
    if unknown:
        raise bad("reasoning", f"unknown fields {sorted(unknown)}")
    return Reasoning(
        strategy=value["strategy"],
        token_budget=_int(value, "budget", 0, 1 << 20, 0),
        score_budget=_int(value, "score_budget", 0, 1 << 20, 0),
        n=_int(value, "n", 0, 64, 0),
        threshold=_number(value, "threshold", 0, 1, 0.0),
    )


def _messages(value: Any) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, list) or not value:
        raise bad("messages", "must be a non-empty list")
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise bad(f"messages[{i}].role", f"must be one of {', '.join(ROLES)}")
        content = m.get("content")
        if content is not None and not isinstance(content, str | list):
            raise bad(f"messages[{i}].content", "must be a string, a list of parts or null")
        if m["role"] == "tool" and not isinstance(m.get("tool_call_id"), str):
            raise bad(f"messages[{i}].tool_call_id", "a tool message needs the call's id")
        if content is None and not m.get("tool_calls"):
            raise bad(f"messages[{i}].content", "required unless the message has tool_calls")
    return tuple(value)


def _tools(body: dict[str, Any]) -> tuple[tuple[dict[str, Any], ...], str]:
    tools = body.get("tools") or []
    if not isinstance(tools, list) or len(tools) > MAX_TOOLS:
        raise bad("tools", f"must be a list of at most {MAX_TOOLS} tools")
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) else None
        if t.get("type") != "function" or not isinstance(fn, dict) or not fn.get("name"):
            raise bad(f"tools[{i}]", "must be {'type': 'function', 'function': {'name': ...}}")
    choice = body.get("tool_choice", "auto" if tools else "none")
    if isinstance(choice, dict):
        choice = str((choice.get("function") or {}).get("name", ""))
        if choice not in {t["function"]["name"] for t in tools}:
            raise bad("tool_choice", f"names no tool offered: {choice!r}")
    elif choice not in ("none", "auto", "required"):
        raise bad("tool_choice", "must be none, auto, required or a function")
    return tuple(tools), choice


def parse_request(body: Any, chat: bool, max_n: int, max_tokens: int) -> ApiRequest:
    """A checked chat or completion request; ApiError (400) naming the first bad field."""
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    unknown = sorted(set(body) - (CHAT if chat else COMPLETION))
    if unknown:
        raise bad(unknown[0], "unrecognized request argument")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise bad("model", "required")
    _refuse_unsupported(body)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad("stream", "must be a boolean")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad("stream_options", "must be an object")
    if options and not stream:
        raise bad("stream_options", "only allowed with stream: true")
    limit = (
        "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    )
    tools, choice = _tools(body) if chat else ((), "none")
    prompt = ""
    conversation = None
    if chat:
        conversation = Chat(_messages(body.get("messages")), tools if choice != "none" else ())
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise bad("prompt", "must be a non-empty string (one prompt a request)")
    gen = Generation(
        prompt=prompt,
        chat=conversation,
        max_tokens=_int(body, limit, 1, max_tokens, 0),
        temperature=_number(body, "temperature", 0, 2, 1.0),  # OpenAI's default
        top_p=_number(body, "top_p", 0, 1, 1.0) or 1.0,
        # no seed: a fresh one, so that sampled replies differ as OpenAI's do
        seed=_int(body, "seed", -(1 << 63), (1 << 64) - 1, secrets.randbits(63)) % (1 << 64),
        knobs=_knobs(body),
        model=body["model"],
    )
    return ApiRequest(
        gen=gen,
        n=_int(body, "n", 1, max_n, 1),
        stream=stream,
        include_usage=bool(options.get("include_usage", False)),
        stops=_stops(body.get("stop")),
        tools=tools if choice != "none" else (),
        tool_choice=choice,
        reasoning=_reasoning(body.get("reasoning")),
        chat=chat,
    )
