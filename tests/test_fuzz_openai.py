"""Hostile HTTP requests to the OpenAI-compatible API of a real edge (bundled drafter) on a real
cloud (bundled target), on 127.0.0.1: malformed JSON, wrong types, oversized bodies. Each gets a
4xx with an OpenAI-shaped error body, never a 5xx, and the API keeps answering."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from fuzz_support import FAST, SEEDS, Cluster
from hypothesis import given
from hypothesis import strategies as st


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    try:
        yield c
    finally:
        c.close()


def _post(cluster: Cluster, body: bytes, path: str = "/v1/chat/completions") -> tuple[int, dict]:
    req = urllib.request.Request(
        f"http://{cluster.harness.api_address}{path}",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


WRONG = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8))


@FAST
@given(field=st.sampled_from(["model", "messages", "max_tokens", "n", "temperature"]), value=WRONG)
def test_wrong_types_get_400_with_an_error(cluster: Cluster, field: str, value: object) -> None:
    body = {"model": "drafter", "max_tokens": 2, "messages": [{"role": "user", "content": "Q 1 ?"}]}
    body[field] = value
    status, reply = _post(cluster, json.dumps(body).encode())
    assert status < 500
    assert status == 200 or reply["error"]["message"]


@FAST
@given(raw=st.binary(max_size=300))
def test_malformed_json_gets_400(cluster: Cluster, raw: bytes) -> None:
    try:
        json.loads(raw)
        return  # hypothesis drew valid JSON: covered by the test above
    except ValueError:
        pass
    status, reply = _post(cluster, raw)
    assert status == 400 and reply["error"]["message"]


def test_an_oversized_body_gets_413(cluster: Cluster) -> None:
    status, reply = _post(cluster, b'{"model": "' + b"a" * (2 << 20) + b'"}')
    assert status == 413 and reply["error"]["message"]


@FAST
@given(seed=SEEDS)
def test_seeded_hostile_requests_have_no_finding(cluster: Cluster, seed: int) -> None:
    import random

    cluster.run(cluster.harness.http_case(random.Random(seed)))
    assert cluster.findings() == []
    assert cluster.run(cluster.harness.check()) == ""
