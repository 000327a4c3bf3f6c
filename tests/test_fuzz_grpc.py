"""Hostile input against every gRPC method of the Cloud, Edge, Coordinator and Experts services,
on real servers on 127.0.0.1 (mTLS): random and mutated messages, oversized fields, streams cut
short or abandoned, Speculate rounds out of order, replayed or at wrong base positions.

Each call ends OK or with a precise status carrying a message; none ends UNKNOWN or INTERNAL, the
servers keep answering and the cloud holds no session afterwards.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from fuzz_support import FAST, RPCS, SEEDS, Cluster
from hypothesis import given
from hypothesis import strategies as st


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    try:
        yield c
    finally:
        c.close()


def _clean(cluster: Cluster) -> None:
    assert cluster.findings() == []
    assert cluster.run(cluster.harness.check()) == ""  # servers answer, no session leaked


def test_every_method_refuses_random_and_mutated_input_cleanly(cluster: Cluster) -> None:
    for i, _ in enumerate(RPCS):
        for seed in range(4):  # seeds 0-3 draw random, mutated and abandoned calls
            cluster.grpc_case(seed * 7919 + i, i)
    _clean(cluster)
    counts = cluster.tally.by_surface
    assert all(any(k.endswith(f".{m.name}") for k in counts) for _, m in RPCS)
    refused = sum(c.get("clean", 0) for c in counts.values())
    assert refused > len(RPCS)  # hostile input is refused, not silently accepted


@FAST
@given(seed=SEEDS, index=st.integers(0, len(RPCS) - 1))
def test_any_rpc_with_any_input_gets_a_clean_status(
    cluster: Cluster, seed: int, index: int
) -> None:
    cluster.grpc_case(seed, index)
    assert cluster.findings() == []


@FAST
@given(seed=SEEDS)
def test_speculate_scripts_out_of_order_replayed_and_abandoned(cluster: Cluster, seed: int) -> None:
    cluster.run(cluster.harness.speculate_script(random.Random(seed)))
    assert cluster.findings() == []


def test_speculate_scripts_leave_no_session_and_the_servers_up(cluster: Cluster) -> None:
    before = cluster.tally.by_surface.get("grpc.Cloud.Speculate.script", {}).get("clean", 0)
    for seed in range(30):
        cluster.run(cluster.harness.speculate_script(random.Random(seed)))
    _clean(cluster)
    after = cluster.tally.by_surface["grpc.Cloud.Speculate.script"]["clean"]
    assert after > before  # some scripts were refused (wrong base, replayed round, ...)
