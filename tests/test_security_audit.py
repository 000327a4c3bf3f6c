"""The ``unauthenticated_accepted`` measurement: zero on a cluster secured as by default, and
not zero when the same audit meets a cluster run in plaintext (so the audit can see a leak)."""

from __future__ import annotations

import asyncio

from tandem.security_audit import run_audit


def test_a_default_cluster_accepts_no_unauthenticated_call_or_foreign_identity() -> None:
    report = asyncio.run(asyncio.wait_for(run_audit(), 90))
    assert report["unauthenticated_attempts"] == 19 and report["unauthorized_attempts"] == 10
    assert report["unauthenticated_accepted"] == 0, [r for r in report["cases"] if r["accepted"]]
    assert report["unauthorized_accepted"] == 0
    kinds = {r["case"].split(":")[0] for r in report["cases"] if r["plane"] == "grpc"}
    assert kinds == {"unary", "server_stream", "bidi"}


def test_the_audit_sees_what_a_plaintext_cluster_lets_in() -> None:
    report = asyncio.run(asyncio.wait_for(run_audit("plaintext"), 90))
    accepted = {r["case"] for r in report["cases"] if r["accepted"]}
    assert {"unary:plaintext", "server_stream:plaintext", "bidi:plaintext"} <= accepted
    assert {"read:plaintext", "publish:plaintext"} <= accepted
    assert "register_victims_id:plain_client_cert" in accepted
    assert report["unauthenticated_accepted"] == 5
