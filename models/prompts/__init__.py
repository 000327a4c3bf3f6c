"""The bundled prompt set for real checkpoints: chat and short reasoning prompts written by the
project (``chat.jsonl``, one ``{"id", "kind", "prompt"}`` object a line).

Used to measure exported drafters against their source checkpoint and drafters of other families
against a target; formatted with the checkpoint's chat template when it has one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

PROMPT_FILE = Path(__file__).with_name("chat.jsonl")
KINDS = ("chat", "reasoning")


@dataclass(frozen=True)
class Prompt:
    """One prompt of the set."""

    id: str  # stable name, e.g. chat-03
    kind: str  # one of KINDS
    text: str  # the user's message


def load_prompts(path: Path = PROMPT_FILE, kinds: tuple[str, ...] = KINDS) -> list[Prompt]:
    """The prompts of ``kinds`` in file order."""
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            raw = json.loads(line)
            if raw["kind"] in kinds:
                out.append(Prompt(raw["id"], raw["kind"], raw["prompt"]))
    return out


def plain(prompt: Prompt) -> str:
    """A template-free rendering any base model continues: a question and an answer cue."""
    return f"Question: {prompt.text}\nAnswer:"


def dialogue(prompt: Prompt) -> str:
    """A template-free chat turn that instruction-tuned models answer rather than end at once
    (SmolLM2-135M-Instruct ends 20 of the 40 ``plain`` prompts at the first token, 2 of these)."""
    return f"User: {prompt.text}\nAssistant:"
