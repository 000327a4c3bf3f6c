"""Text as it streams (incremental decoding, stop sequences) and the bundled task's template."""

from __future__ import annotations

import json

import pytest

from models.task import WordTokenizer
from node_runtime.openai_api.templates import Chat, TaskTemplate
from node_runtime.openai_api.text import IncrementalText, StopScanner

TOOL = {"type": "function", "function": {"name": "calc", "parameters": {}}}


def test_incremental_text_keeps_what_joins_the_pieces() -> None:
    tok = WordTokenizer()
    ids = tok.encode("17 + 5 = 22 ; A 22")
    text = IncrementalText(tok)
    pieces = [text.add(ids[i : i + 2]) for i in range(0, len(ids), 2)]
    assert "".join(pieces) == tok.decode(ids)  # per-piece decoding would lose the spaces
    assert "".join(tok.decode(ids[i : i + 2]) for i in range(0, len(ids), 2)) != tok.decode(ids)


@pytest.mark.parametrize("cut", range(1, 12))
def test_a_stop_split_across_pieces_is_found_and_nothing_after_it_leaks(cut: int) -> None:
    text = "abc</tool_call>tail"
    scanner = StopScanner(["</tool_call>", "\n\n"])
    out = scanner.feed(text[: 3 + cut]) + scanner.feed(text[3 + cut :]) + scanner.flush()
    assert out == "abc" and scanner.stopped == "</tool_call>"


def test_without_a_stop_everything_comes_out() -> None:
    scanner = StopScanner([";"])
    assert scanner.feed("17 + 5") + scanner.feed(" = 22") + scanner.flush() == "17 + 5 = 22"
    assert scanner.stopped is None


def test_the_task_template_renders_steps_and_tool_results() -> None:
    call = {
        "id": "c",
        "type": "function",
        "function": {"name": "calc", "arguments": json.dumps({"expression": "17 + 5"})},
    }
    chat = Chat(
        (
            {"role": "system", "content": "be brief"},  # dropped: the models follow no instructions
            {"role": "user", "content": "17 + 5 * 3"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c", "content": "22"},
        ),
        (TOOL,),
    )
    t = TaskTemplate()
    assert t.render(chat) == "Q 17 + 5 * 3 ? 17 + 5 = 22 ;"
    step = t.parse("22 * 3 = 66 ", [TOOL])
    assert step.content is None and json.loads(step.tool_calls[0].arguments) == {
        "expression": "22 * 3"
    }
    assert t.parse("A 66", [TOOL]).content == "A 66" and t.parse("22 * 3 = 66", []).tool_calls == ()
    for bad in ("hello", "Q what ?", ""):
        with pytest.raises(ValueError, match="arithmetic task"):
            t.render(Chat(({"role": "user", "content": bad},)))
