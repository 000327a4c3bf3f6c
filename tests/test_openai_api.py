"""The OpenAI-compatible API, driven by the official ``openai`` client against a real local cluster.

One cluster for the module: a cloud node with the trained target, an edge node with the trained
drafter, the edge's API and the coordinator's front door, all on 127.0.0.1.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai_support import EdgeCluster

from models import task
from node_runtime.openai_api.backend import EdgeBackend
from node_runtime.openai_api.server import ApiConfig, ApiServer

CALCULATOR = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "exact arithmetic modulo 100",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string"}},
            "required": ["expression"],
        },
    },
}


@pytest.fixture(scope="module")
def cluster() -> Iterator[EdgeCluster]:
    c = EdgeCluster(front_door=True)
    yield c
    c.close()


@pytest.fixture(scope="module", params=["edge", "coordinator"])
def client(request: pytest.FixtureRequest, cluster: EdgeCluster) -> openai.OpenAI:
    url = cluster.base_url if request.param == "edge" else cluster.front_url
    return openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)


def _problems(n: int) -> list[task.Problem]:
    return task.generate(n, task.HELDOUT_SEED)


def _ask(question: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": question}]


def test_chat_is_lossless_and_carries_the_account(client: openai.OpenAI) -> None:
    for p in _problems(3):
        spec = client.chat.completions.create(
            model="drafter",
            messages=_ask(p.question),
            temperature=0,
            max_tokens=48,
            extra_body={"mode": "speculation", "k_policy": "fixed", "draft_length": 3},
        )
        alone = client.chat.completions.create(
            model="tandem",
            messages=_ask(p.question),
            temperature=0,
            max_tokens=48,
            extra_body={"mode": "cloud-only"},
        )
        assert spec.choices[0].message.content == alone.choices[0].message.content
        assert spec.object == "chat.completion" and spec.choices[0].finish_reason == "stop"
        account = spec.model_extra["tandem"]
        assert account["mode"] == "speculation" and account["chat_template"] == "task"
        assert account["drafted_tokens"] >= account["accepted_tokens"] > 0
        assert alone.model_extra["tandem"]["mode"] == "cloud-only"
        assert alone.model_extra["tandem"]["drafted_tokens"] == 0
        assert (
            spec.usage.completion_tokens
            == len(task.WordTokenizer().encode(spec.choices[0].message.content)) + 1
        )  # the end-of-sequence token is generated but not shown
        assert spec.usage.prompt_tokens == len(p.question.split()) + 1  # BOS


def test_streaming_with_the_clients_stream_helper(client: openai.OpenAI) -> None:
    p = _problems(1)[0]
    whole = client.chat.completions.create(
        model="drafter", messages=_ask(p.question), temperature=0
    )
    deltas = []
    with client.chat.completions.stream(
        model="drafter",
        messages=_ask(p.question),
        temperature=0,
        stream_options={"include_usage": True},
        extra_body={"mode": "speculation"},  # cloud-only sends its tokens in one piece
    ) as stream:
        for event in stream:
            if event.type == "content.delta":
                deltas.append(event.delta)
        final = stream.get_final_completion()
    assert len([d for d in deltas if d]) > 1  # tokens arrived in more than one piece
    assert "".join(deltas) == whole.choices[0].message.content
    assert final.choices[0].message.content == whole.choices[0].message.content
    assert final.usage.completion_tokens == whole.usage.completion_tokens


def _sse(url: str, body: dict[str, Any]) -> list[str]:
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        lines = r.read().decode().split("\n\n")
    return [line.removeprefix("data: ") for line in lines if line]


def test_raw_stream_chunks_have_openais_fields_and_end_with_done(cluster: EdgeCluster) -> None:
    body = {
        "model": "drafter",
        "messages": _ask(_problems(1)[0].question),
        "temperature": 0,
        "stream": True,
        "n": 2,
        "stream_options": {"include_usage": True},
    }
    events = _sse(f"{cluster.base_url}/chat/completions", body)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len({c["id"] for c in chunks}) == 1 and len({c["created"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "drafter" for c in chunks)
    *with_choices, usage = chunks
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] > 0
    assert len(usage["tandem"]["choices"]) == 2
    indices = {ch["index"] for c in with_choices for ch in c["choices"]}
    assert indices == {0, 1}
    finishes = [ch for c in with_choices for ch in c["choices"] if ch["finish_reason"]]
    assert sorted(ch["index"] for ch in finishes) == [0, 1]


def test_stop_sequences_cut_the_reply(client: openai.OpenAI) -> None:
    p = _problems(1)[0]
    r = client.chat.completions.create(
        model="drafter", messages=_ask(p.question), temperature=0, stop=[";"]
    )
    content = r.choices[0].message.content
    whole = (
        client.chat.completions.create(model="drafter", messages=_ask(p.question), temperature=0)
        .choices[0]
        .message.content
    )
    assert ";" not in content and whole.startswith(content) and len(content) < len(whole)
    assert r.choices[0].finish_reason == "stop"
    assert r.model_extra["tandem"]["stop"] == ";"


def test_max_tokens_ends_with_length(client: openai.OpenAI) -> None:
    r = client.completions.create(
        model="drafter", prompt=_problems(1)[0].question, temperature=0, max_tokens=3
    )
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3
    assert len(r.choices[0].text.split()) == 3
    alone = client.completions.create(
        model="drafter",
        prompt=_problems(1)[0].question,
        temperature=0,
        extra_body={"mode": "edge-only"},  # implies quality_floor any, on the front door too
    )
    assert alone.model_extra["tandem"]["mode"] == "edge-only"
    assert alone.model_extra["tandem"]["cloud_model_cpu_s"] == 0


def test_sampling_with_a_seed_repeats_and_n_gives_choices(client: openai.OpenAI) -> None:
    q = _ask(_problems(1)[0].question)
    kw: dict[str, Any] = {"model": "drafter", "messages": q, "temperature": 1.0, "seed": 7}
    a = client.chat.completions.create(n=3, **kw)
    b = client.chat.completions.create(n=3, **kw)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]


def _agent(client: openai.OpenAI, question: str, stream: bool) -> tuple[str, int]:
    """The calculator loop: each step the model takes is a tool call the tool completes."""
    messages = _ask(question)
    calls = 0
    for _ in range(8):
        if stream:
            with client.chat.completions.stream(
                model="drafter", messages=messages, temperature=0, tools=[CALCULATOR]
            ) as s:
                message = s.get_final_completion().choices[0].message
        else:
            r = client.chat.completions.create(
                model="drafter", messages=messages, temperature=0, tools=[CALCULATOR]
            )
            message = r.choices[0].message
        if not message.tool_calls:
            return message.content or "", calls
        messages.append(message.model_dump(exclude_none=True))
        for call in message.tool_calls:
            a, op, b = json.loads(call.function.arguments)["expression"].split()
            result = task.apply(op, int(a), int(b))
            messages.append({"role": "tool", "tool_call_id": call.id, "content": str(result)})
            calls += 1
    raise AssertionError("the agent did not finish in 8 steps")


@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_calling_round_trip_solves_the_task(client: openai.OpenAI, stream: bool) -> None:
    p = _problems(1)[0]
    answer, calls = _agent(client, p.question, stream)
    assert calls == len(p.ops)  # one calculator call per step
    assert task.is_correct(p, answer)


def test_streamed_tool_call_deltas_carry_their_index(cluster: EdgeCluster) -> None:
    body = {
        "model": "drafter",
        "messages": _ask(_problems(1)[0].question),
        "temperature": 0,
        "stream": True,
        "tools": [CALCULATOR],
    }
    chunks = [json.loads(e) for e in _sse(f"{cluster.base_url}/chat/completions", body)[:-1]]
    deltas = [ch["delta"] for c in chunks for ch in c["choices"]]
    calls = [tc for d in deltas for tc in d.get("tool_calls") or []]
    assert calls and all(tc["index"] == 0 for tc in calls)
    assert calls[0]["function"]["name"] == "calculator" and calls[0]["id"].startswith("call_")
    assert [ch["finish_reason"] for c in chunks for ch in c["choices"]][-1] == "tool_calls"


def test_models_are_listed(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert ids == {"tandem", "drafter"}
    assert client.models.retrieve("drafter").id == "drafter"


def test_a_model_not_served_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-9", messages=_ask("Q 1 + 2 * 3 - 4 ?"))
    assert err.value.body["code"] == "model_not_found" and err.value.body["param"] == "model"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"temperature": 5}, "temperature"),
        ({"top_p": -0.5}, "top_p"),
        ({"n": 0}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ],
)
def test_bad_fields_are_400_naming_the_field(
    client: openai.OpenAI, extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="drafter", messages=_ask("Q 1 + 2 * 3 - 4 ?"), **extra)
    assert err.value.status_code == 400 and err.value.body["param"] == param


def test_unknown_fields_knobs_and_words_outside_the_task_are_400(client: openai.OpenAI) -> None:
    for extra_body, words in (
        ({"bogus": 1}, "unrecognized"),
        ({"mode": "teleport"}, "mode"),
        ({"k_policy": "magic"}, "k_policy"),
    ):
        with pytest.raises(openai.BadRequestError, match=words):
            client.chat.completions.create(
                model="drafter", messages=_ask("Q 1 + 2 * 3 - 4 ?"), extra_body=extra_body
            )
    with pytest.raises(openai.BadRequestError, match="synthetic arithmetic task"):
        client.chat.completions.create(model="drafter", messages=_ask("hello, who are you?"))


def _status(url: str, method: str, data: bytes | None) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, data, {"Content-Type": "application/json"}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_http_errors_keep_openais_shape(cluster: EdgeCluster) -> None:
    url = f"{cluster.base_url}/chat/completions"
    for method, data, status in (
        ("GET", None, 405),
        ("POST", b"{not json", 400),
        ("POST", b"[1, 2]", 400),
        ("POST", json.dumps({"model": "drafter"}).encode(), 400),
        ("POST", b"x" * (2 << 20), 413),
    ):
        code, body = _status(url, method, data)
        assert code == status
        assert set(body["error"]) == {"message", "type", "param", "code"}
    code, body = _status(f"{cluster.base_url}/nowhere", "GET", None)
    assert code == 404 and body["error"]["message"]


def test_an_api_key_is_checked_and_off_loopback_one_is_required(
    cluster: EdgeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = EdgeBackend(cluster.edge.address, "drafter")
    server = ApiServer(backend, ApiConfig(port=0), key="s3cret-key")
    address = cluster.threads.run(server.start())
    try:
        url = f"http://{address}/v1"
        good = openai.OpenAI(base_url=url, api_key="s3cret-key", max_retries=0)
        assert {m.id for m in good.models.list()} == {"tandem", "drafter"}
        bad = openai.OpenAI(base_url=url, api_key="s3cret-kez", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as err:
            bad.models.list()
        assert err.value.status_code == 401 and err.value.body["code"] == "invalid_api_key"
    finally:
        cluster.threads.run(server.stop())
    monkeypatch.delenv("TANDEM_API_KEY", raising=False)
    with pytest.raises(ValueError, match="without an API key"):
        ApiServer(backend, ApiConfig(port=0, host="0.0.0.0"))
    ApiServer(backend, ApiConfig(port=0, host="0.0.0.0", allow_unauthenticated=True))
    monkeypatch.setenv("TANDEM_API_KEY", "from-env")
    assert ApiServer(backend, ApiConfig(port=0, host="0.0.0.0")).key == "from-env"


def test_completions_stream_and_the_reasoning_knob(client: openai.OpenAI) -> None:
    p = _problems(1)[0]
    pieces = list(
        client.completions.create(
            model="drafter",
            prompt=p.question,
            temperature=0,
            stream=True,
            extra_body={"mode": "speculation"},
        )
    )
    assert all(c.object == "text_completion" for c in pieces)
    text = "".join(c.choices[0].text for c in pieces if c.choices)
    assert task.is_correct(p, text)
    r = client.chat.completions.create(
        model="drafter",
        messages=_ask(p.question),
        extra_body={"reasoning": {"strategy": "specreason", "budget": 256}},
    )
    account = r.model_extra["tandem"]
    assert account["reasoning"] == "specreason" and account["drafted_steps"] >= 1
    assert task.is_correct(p, r.choices[0].message.content)
    with pytest.raises(openai.BadRequestError, match="reasoning"):
        client.chat.completions.create(
            model="drafter", messages=_ask(p.question), extra_body={"reasoning": {"budget": 1}}
        )
