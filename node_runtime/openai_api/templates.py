"""Chat templates: a conversation (OpenAI messages, tools) to a prompt, and replies to tool calls.

Two families:

- ``hf``: the checkpoint's own template, read from its tokenizer config (SmolLM2's ChatML one,
  for instance) and rendered by the tokenizer it was loaded with (``models.hf_backend``). Tools
  are described in a system message and called as ``<tool_call>{"name": ..., "arguments":
  {...}}</tool_call>``, unless the template renders tools itself.
- ``task``: the bundled models, which speak only the synthetic arithmetic task
  (``Q 17 + 5 * 3 - 4 ?`` -> ``17 + 5 = 22 ; 22 * 3 = 66 ; 66 - 4 = 62 ; A 62``). The last user
  message must be such a question; system messages are dropped (the models follow no
  instructions). With a tool offered, each step the model writes is a call of that tool on the
  step's expression, and the tool's answer completes the step (``a op b = <result> ;``).

The edge renders (it holds the tokenizer); the HTTP layer parses replies with the template the
edge names on its stream events, so the coordinator needs no model to parse them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
MAX_CHAT_JSON_CHARS = 262_144  # a conversation's JSON on the wire
_TASK_QUESTION = re.compile(r"^\s*(Q\s+)?(?P<body>[0-9+\-*\s]+?)\s*(\?\s*)?$")
_TASK_STEP = re.compile(r"^\s*(?P<a>\d+)\s*(?P<op>[+\-*])\s*(?P<b>\d+)\s*=")
_TASK_ANSWER = re.compile(r"^\s*A\s+(?P<n>\d+)")


@dataclass(frozen=True)
class ToolCall:
    """One call of a tool the model asked for."""

    name: str
    arguments: str  # JSON text of the arguments object
    id: str = ""


@dataclass(frozen=True)
class Parsed:
    """A reply split into its text and the tool calls it makes."""

    content: str | None
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True)
class Chat:
    """A conversation to render: OpenAI-shaped messages and the tools offered."""

    messages: tuple[dict[str, Any], ...]
    tools: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    def to_json(self) -> str:
        """The ``chat_json`` wire field."""
        return json.dumps({"messages": list(self.messages), "tools": list(self.tools)})

    @staticmethod
    def from_json(text: str) -> Chat:
        """A conversation from ``chat_json``; ValueError naming what is wrong."""
        if len(text) > MAX_CHAT_JSON_CHARS:
            raise ValueError(f"chat_json: at most {MAX_CHAT_JSON_CHARS} characters")
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"chat_json: not JSON: {exc}") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("messages"), list):
            raise ValueError("chat_json: must be an object with a messages list")
        messages, tools = obj["messages"], obj.get("tools") or []
        if not messages or not all(isinstance(m, dict) for m in messages):
            raise ValueError("chat_json: messages must be a non-empty list of objects")
        if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
            raise ValueError("chat_json: tools must be a list of objects")
        return Chat(tuple(messages), tuple(tools))


class ChatTemplate(Protocol):
    """Renders conversations for one model and reads tool calls back from its replies."""

    name: str

    def render(self, chat: Chat) -> str:
        """The prompt text, ending where the assistant's reply starts."""
        ...

    def tool_stops(self) -> tuple[str, ...]:
        """Stop strings that end a reply after one tool call (used when tools are offered)."""
        ...

    def parse(self, text: str, tools: Sequence[dict[str, Any]]) -> Parsed:
        """The reply's content and tool calls (none unless ``tools`` were offered)."""
        ...


def tool_names(tools: Sequence[dict[str, Any]]) -> list[str]:
    """Names of the function tools offered."""
    return [str((t.get("function") or {}).get("name", "")) for t in tools if t.get("function")]


def _content_text(message: dict[str, Any]) -> str:
    """A message's content as text (OpenAI allows a list of text parts)."""
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    raise ValueError("messages: content must be a string, a list of text parts or null")


class TaskTemplate:
    """The bundled models' template: the arithmetic task, tool calls as steps (module docstring)."""

    name = "task"

    def render(self, chat: Chat) -> str:
        """``Q <question> ?`` and any steps already taken, with tool results filled in."""
        users = [i for i, m in enumerate(chat.messages) if m.get("role") == "user"]
        if not users:
            raise ValueError("messages: the bundled models need a user message with a question")
        last = users[-1]
        question = _content_text(chat.messages[last])
        found = _TASK_QUESTION.match(question)
        if not found or not found.group("body").strip():
            raise ValueError(
                "messages: the bundled models speak only the synthetic arithmetic task; ask "
                f"like 'Q 17 + 5 * 3 - 4 ?' (numbers 0-99 and + - *), got {question[:80]!r}"
            )
        parts = ["Q", " ".join(found.group("body").split()), "?"]
        for m in chat.messages[last + 1 :]:
            role = m.get("role")
            if role == "assistant":
                parts.append(_content_text(m).strip())
                for call in m.get("tool_calls") or []:
                    args = json.loads((call.get("function") or {}).get("arguments") or "{}")
                    parts.append(f"{' '.join(str(args.get('expression', '')).split())} =")
            elif role == "tool":
                result = _content_text(m).strip()
                if not result.isdigit():
                    raise ValueError(
                        "messages: the bundled models read a tool result only as a number "
                        f"(0-99), got {result[:40]!r}"
                    )
                parts.append(f"{result} ;")
        return " ".join(p for p in parts if p)

    def tool_stops(self) -> tuple[str, ...]:
        """One step at a time: a step ends at ``;``."""
        return (";",)

    def parse(self, text: str, tools: Sequence[dict[str, Any]]) -> Parsed:
        """A step ``a op b = ...`` is a call of the first tool offered; anything else is text."""
        names = tool_names(tools)
        step = _TASK_STEP.match(text)
        if names and step and not _TASK_ANSWER.match(text):
            expression = f"{step.group('a')} {step.group('op')} {step.group('b')}"
            return Parsed(None, (ToolCall(names[0], json.dumps({"expression": expression})),))
        return Parsed(text)


class JinjaRenderer:
    """A chat template's Jinja source rendered without transformers (a torch-free edge holding
    an exported checkpoint), in a sandbox as transformers renders it; needs ``jinja2``."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "") -> None:
        try:
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError as exc:
            raise ImportError("rendering a checkpoint's chat template needs jinja2") from exc

        def fail(message: str) -> None:
            raise ValueError(f"chat template: {message}")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.filters["tojson"] = lambda value, indent=None: json.dumps(value, indent=indent)
        env.globals["raise_exception"] = fail
        self.template = env.from_string(source)
        self.chat_template = source
        self.special = {"bos_token": bos_token, "eos_token": eos_token}

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        tokenize: bool = False,
        add_generation_prompt: bool = True,
        **kwargs: Any,
    ) -> str:
        """The rendered conversation (the part of transformers' method the templates use)."""
        return str(
            self.template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                **self.special,
                **kwargs,
            )
        )


class HFChatTemplate:
    """A real checkpoint's own template, rendered by its transformers tokenizer (or, given only
    the template's source, by ``JinjaRenderer``)."""

    name = "hf"

    def __init__(self, hf_tokenizer: Any) -> None:
        self.tokenizer = hf_tokenizer
        source = getattr(hf_tokenizer, "chat_template", None)
        if not isinstance(source, str) or not source:
            raise ValueError("the tokenizer has no chat template")
        self.native_tools = "tools" in source

    def render(self, chat: Chat) -> str:
        """The template's rendering, with a generation prompt for the assistant."""
        messages = [self._plain(m) for m in chat.messages]
        if chat.tools and not self.native_tools:
            messages = self._with_tool_prompt(messages, chat.tools)
        kwargs: dict[str, Any] = {"tools": list(chat.tools)} if self.native_tools else {}
        return str(
            self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True, **kwargs
            )
        )

    @staticmethod
    def _plain(m: dict[str, Any]) -> dict[str, Any]:
        """Text content; an assistant's tool calls written as the calls it would have made."""
        text = _content_text(m)
        for call in m.get("tool_calls") or []:
            fn = call.get("function") or {}
            args = json.loads(fn.get("arguments") or "{}")
            payload = json.dumps({"name": fn.get("name", ""), "arguments": args})
            text += f"{TOOL_CALL_OPEN}{payload}{TOOL_CALL_CLOSE}"
        return {"role": str(m.get("role", "user")), "content": text}

    @staticmethod
    def _with_tool_prompt(
        messages: list[dict[str, Any]], tools: Sequence[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        specs = "\n".join(json.dumps(t.get("function", t)) for t in tools)
        prompt = (
            "You may call these tools:\n"
            f"{specs}\n"
            f"To call one, answer only {TOOL_CALL_OPEN}"
            '{"name": <tool name>, "arguments": <arguments object>}'
            f"{TOOL_CALL_CLOSE}"
        )
        if messages and messages[0]["role"] == "system":
            head = {"role": "system", "content": f"{messages[0]['content']}\n\n{prompt}"}
            return [head, *messages[1:]]
        return [{"role": "system", "content": prompt}, *messages]

    def tool_stops(self) -> tuple[str, ...]:
        """A reply ends after its first tool call."""
        return (TOOL_CALL_CLOSE,)

    def parse(self, text: str, tools: Sequence[dict[str, Any]]) -> Parsed:
        """``<tool_call>{json}</tool_call>`` blocks naming an offered tool become calls."""
        return parse_tool_call_tags(text, tools)


def parse_tool_call_tags(text: str, tools: Sequence[dict[str, Any]]) -> Parsed:
    """Tool calls written as tagged JSON; the text before the first one stays content."""
    names = set(tool_names(tools))
    if not names or TOOL_CALL_OPEN not in text:
        return Parsed(text)
    head, *blocks = text.split(TOOL_CALL_OPEN)
    calls = []
    for block in blocks:
        body = block.split(TOOL_CALL_CLOSE, 1)[0].strip()
        try:
            obj = json.loads(body)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and obj.get("name") in names:
            args = obj.get("arguments", {})
            calls.append(
                ToolCall(str(obj["name"]), args if isinstance(args, str) else json.dumps(args))
            )
    if not calls:
        return Parsed(text)
    return Parsed(head.strip() or None, tuple(calls))


PLAIN = "plain"  # no template: the last user message is the prompt


class PlainTemplate:
    """For models without a chat template: the last user message, as it is."""

    name = PLAIN

    def render(self, chat: Chat) -> str:
        """The last user message's text."""
        users = [m for m in chat.messages if m.get("role") == "user"]
        if not users:
            raise ValueError("messages: need a user message")
        return _content_text(users[-1])

    def tool_stops(self) -> tuple[str, ...]:
        """As the tagged format."""
        return (TOOL_CALL_CLOSE,)

    def parse(self, text: str, tools: Sequence[dict[str, Any]]) -> Parsed:
        """Tagged tool calls, as for ``hf``."""
        return parse_tool_call_tags(text, tools)


TEMPLATES: dict[str, type] = {"task": TaskTemplate, "hf": HFChatTemplate, PLAIN: PlainTemplate}


def template_for(tokenizer: Any) -> ChatTemplate:
    """The template a node's tokenizer calls for: its checkpoint's own, the task's, or plain."""
    hf = getattr(tokenizer, "tokenizer", None)
    if hf is not None and getattr(hf, "chat_template", None):
        return HFChatTemplate(hf)
    source = getattr(tokenizer, "chat_template", None)  # an exported checkpoint's, as text
    if isinstance(source, str) and source:
        specials = [getattr(tokenizer, n, "") for n in ("bos_token", "eos_token")]
        return HFChatTemplate(JinjaRenderer(source, *(str(t or "") for t in specials)))
    if type(tokenizer).__name__ == "WordTokenizer":  # the bundled task's tokenizer
        return TaskTemplate()
    return PlainTemplate()


def parser_for(name: str) -> ChatTemplate:
    """A template that parses replies of the family ``name`` (the HF one needs no tokenizer)."""
    if name == "hf":
        return _ParseOnlyHF()
    if name == "task":
        return TaskTemplate()
    return PlainTemplate()


class _ParseOnlyHF(PlainTemplate):
    """Parses the ``hf`` family's replies where its tokenizer is not loaded (the coordinator)."""

    name = "hf"
