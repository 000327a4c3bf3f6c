"""``tandem chat``: a streaming REPL over the OpenAI-compatible API (stdlib HTTP, no SDK needed)."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any, TextIO

HELP = "/reset forgets the conversation, /quit (or Ctrl-D) leaves"


def stream_chat(
    api: str, body: dict[str, Any], key: str = "", timeout_s: float = 300.0
) -> Iterator[dict[str, Any]]:
    """The chunks of one streamed chat completion; RuntimeError with the API's error message."""
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(
        f"{api.rstrip('/')}/chat/completions",
        json.dumps({**body, "stream": True}).encode(),
        headers,
    )
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        raise RuntimeError(json.loads(exc.read())["error"]["message"]) from None
    with response:
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                return
            chunk = json.loads(data)
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            yield chunk


def chat_repl(
    api: str, args: argparse.Namespace, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout
) -> int:
    """Read a line, stream the reply, print where it ran; until /quit or end of input."""
    from tandem.cli_cluster import _summary

    system = [{"role": "system", "content": args.system}] if args.system else []
    messages: list[dict[str, Any]] = list(system)
    extra = {
        k: v
        for k, v in (
            ("mode", args.mode),
            ("k_policy", args.k_policy),
            ("quality_floor", args.quality_floor),
        )
        if v
    }
    print(f"tandem chat on {api} ({HELP})", file=stdout)
    while True:
        print("> ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line or line.strip() == "/quit":
            return 0
        if line.strip() == "/reset":
            messages = list(system)
            continue
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line.strip()})
        body = {
            "model": args.model,
            "messages": messages,
            "temperature": args.temperature,
            "seed": args.seed,
            "objective": args.objective,
            "stream_options": {"include_usage": True},
            **extra,
            **({"max_tokens": args.max_tokens} if args.max_tokens else {}),
        }
        reply, account = [], {}
        try:
            for chunk in stream_chat(api, body, args.api_key):
                for choice in chunk["choices"]:
                    text = choice["delta"].get("content") or ""
                    reply.append(text)
                    print(text, end="", file=stdout, flush=True)
                account = chunk.get("tandem") or account
        except RuntimeError as exc:
            messages.pop()
            print(f"error: {exc}", file=stdout)
            continue
        print(file=stdout)
        print(_summary(account, account.get("mode"), account.get("cloud_node")), file=stdout)
        messages.append({"role": "assistant", "content": "".join(reply)})
