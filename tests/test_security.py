"""Secure by default: mTLS, the bearer token on every RPC kind, identities bound to certificates.

Every server here is a real grpc.aio server on 127.0.0.1 in the run's state directory
(``TANDEM_HOME``, set by conftest), secured as a node is by default.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from cloud_node.node import start_cloud
from coordinator.service import serve
from models.task import WordTokenizer
from node_runtime import pki, security
from node_runtime.auth import AuthInterceptor, check_token
from node_runtime.serving import aio_channel, aio_server, bind
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[1]
TOK = WordTokenizer()


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


async def code_of(call: Any) -> grpc.StatusCode:
    try:
        await call()
        return grpc.StatusCode.OK
    except grpc.aio.AioRpcError as err:
        return err.code()


def test_default_is_tls_and_plaintext_is_only_explicit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TANDEM_SECURITY", raising=False)
    assert security.from_env().mode == "auto" and security.from_env().secure
    monkeypatch.setenv("TANDEM_SECURITY", "plaintext")
    assert not security.from_env().secure
    monkeypatch.setenv("TANDEM_SECURITY", "none")
    with pytest.raises(ValueError, match="mode must be one of"):
        security.from_env()
    assert "token" not in repr(security.SecurityConfig(token="t" * 20)).split("mode")[0]
    assert "tttt" not in repr(security.SecurityConfig(token="t" * 20))


def test_state_directory_is_private_and_shared_by_every_process() -> None:
    config = security.default()
    token, _ = security.token(config), security.ca(config)
    home = config.state_dir
    assert (home.stat().st_mode & 0o777) == 0o700
    for name in ("ca.key", "token"):
        assert (home / name).stat().st_mode & 0o777 == 0o600, name
    # another process, without flags, finds the same CA and token
    code = "from node_runtime import security as s; c=s.default(); print(s.token(c)==s.token(c))"
    out = subprocess.run(
        [sys.executable, "-c", code + "; print(s.ca(c).cert_pem.decode().splitlines()[1])"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout.split()
    assert out[0] == "True" and out[1] == security.ca(config).cert_pem.decode().splitlines()[1]
    assert len(token) >= 40


def test_tls_node_refuses_plaintext_and_certs_from_another_ca() -> None:
    async def main() -> dict[str, grpc.StatusCode]:
        coordinator, address = await serve()
        other_ca = pki.make_ca("another CA")
        stranger = pki.make_node_cert(other_ca, "stranger")
        config = security.default()
        ca = security.ca(config).cert_pem
        bearer = grpc.access_token_call_credentials(security.token(config))
        kinds = {
            "plaintext": grpc.aio.insecure_channel(address),
            "no_cert": grpc.aio.secure_channel(
                address,
                grpc.composite_channel_credentials(grpc.ssl_channel_credentials(ca), bearer),
            ),
            "other_ca": grpc.aio.secure_channel(
                address,
                grpc.composite_channel_credentials(
                    grpc.ssl_channel_credentials(ca, stranger.key_pem, stranger.cert_pem), bearer
                ),
            ),
            "good": aio_channel(address),
        }
        out = {}
        try:
            for name, ch in kinds.items():
                async with ch:
                    stub = pb_grpc.CoordinatorStub(ch)
                    out[name] = await code_of(
                        lambda s=stub: s.ListNodes(pb.ListNodesRequest(), timeout=5)
                    )
        finally:
            await coordinator.stop(0)
        return out

    codes = run(main())
    assert codes["good"] == grpc.StatusCode.OK
    for name in ("plaintext", "no_cert", "other_ca"):
        assert codes[name] == grpc.StatusCode.UNAVAILABLE, name


def test_a_refused_client_is_logged_with_the_reason_by_the_server_process(tmp_path: Path) -> None:
    """gRPC tells the client only UNAVAILABLE; the server's log says why."""
    ready = tmp_path / "ready.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("GRPC_VERBOSITY", None)
    cmd = [sys.executable, "-m", "tandem", "serve", "coordinator", "--ready-file", str(ready)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 30
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < end, "coordinator never ready"
            time.sleep(0.05)
        address = json.loads(ready.read_text())["address"]

        async def knock() -> None:
            ca = security.ca(security.default()).cert_pem
            stranger = pki.make_node_cert(pki.make_ca("another CA"), "stranger")
            for creds in (
                grpc.ssl_channel_credentials(ca),
                grpc.ssl_channel_credentials(ca, stranger.key_pem, stranger.cert_pem),
            ):
                async with grpc.aio.secure_channel(address, creds) as ch:
                    code = await code_of(
                        lambda c=ch: pb_grpc.CoordinatorStub(c).ListNodes(
                            pb.ListNodesRequest(), timeout=3
                        )
                    )
                    assert code == grpc.StatusCode.UNAVAILABLE
            async with grpc.aio.insecure_channel(address) as ch:
                stub = pb_grpc.CoordinatorStub(ch)
                assert await code_of(lambda: stub.ListNodes(pb.ListNodesRequest(), timeout=3)) == (
                    grpc.StatusCode.UNAVAILABLE
                )

        run(knock())
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    refused = [e for e in events if e["event"] == "tls_handshake_refused"]
    reasons = {e["reason"] for e in refused}
    assert "the client presented no certificate" in reasons, err[-2000:]
    assert "the client spoke plaintext (or not TLS) to a TLS port" in reasons
    assert any("CERTIFICATE_VERIFY_FAILED" in e["detail"] for e in refused)
    assert security.token(security.default()) not in err  # no secret in the logs


def _channel_with(address: str, token: str | None) -> grpc.aio.Channel:
    config = security.default()
    pair = security.identity(config, security.CLIENT_IDENTITY)
    creds = grpc.ssl_channel_credentials(security.ca(config).cert_pem, pair.key_pem, pair.cert_pem)
    if token is not None:
        creds = grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(token))
    return grpc.aio.secure_channel(address, creds)


async def _unary(coord: grpc.aio.Channel, cloud: grpc.aio.Channel) -> None:
    await pb_grpc.CoordinatorStub(coord).ListNodes(pb.ListNodesRequest(), timeout=5)


async def _server_stream(coord: grpc.aio.Channel, cloud: grpc.aio.Channel) -> None:
    async for _ in pb_grpc.CoordinatorStub(coord).Submit(pb.JobRequest(), timeout=5):
        pass


async def _bidi(coord: grpc.aio.Channel, cloud: grpc.aio.Channel) -> None:
    call = pb_grpc.CloudStub(cloud).Speculate(timeout=5)
    await call.write(pb.SpecRequest())  # empty: the handler itself would say INVALID_ARGUMENT
    async for _ in call:
        pass


KINDS = {"unary": _unary, "server_stream": _server_stream, "bidi": _bidi}


def test_missing_or_wrong_token_is_refused_on_unary_server_stream_and_bidi(
    target: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> dict[tuple[str, str], tuple[grpc.StatusCode, str]]:
        coordinator, coord = await serve()
        cloud = await start_cloud(target, TOK.eos_id)
        out = {}
        try:
            for name, token in (("none", None), ("wrong", "w" * 43), ("good", "")):
                if name == "good":
                    channels = aio_channel(coord), aio_channel(cloud.address)
                else:
                    channels = _channel_with(coord, token), _channel_with(cloud.address, token)
                async with channels[0] as ch, channels[1] as cch:
                    for kind, call in KINDS.items():
                        try:
                            await call(ch, cch)
                            out[(name, kind)] = (grpc.StatusCode.OK, "")
                        except grpc.aio.AioRpcError as err:
                            out[(name, kind)] = (err.code(), err.details() or "")
        finally:
            await cloud.stop()
            await coordinator.stop(0)
        return out

    with caplog.at_level(logging.WARNING, logger="node_runtime.auth"):
        codes = run(main())
    for kind in KINDS:
        assert codes[("none", kind)][0] == grpc.StatusCode.UNAUTHENTICATED, kind
        assert "missing bearer token" in codes[("none", kind)][1]
        assert codes[("wrong", kind)][0] == grpc.StatusCode.UNAUTHENTICATED, kind
        assert codes[("wrong", kind)][1] == "invalid bearer token"
    # the cluster's token reaches the handlers, which answer the empty requests themselves
    assert codes[("good", "unary")][0] == grpc.StatusCode.OK
    assert codes[("good", "server_stream")][0] == grpc.StatusCode.INVALID_ARGUMENT
    assert codes[("good", "bidi")][0] == grpc.StatusCode.INVALID_ARGUMENT
    logged = [r for r in caplog.records if r.getMessage() == "rpc_unauthenticated"]
    assert len(logged) == 6
    assert all("w" * 43 not in str(r.__dict__) for r in logged)
    assert {r.__dict__["fields"]["method"] for r in logged} == {
        "/tandem_wire.v1.Coordinator/ListNodes",
        "/tandem_wire.v1.Coordinator/Submit",
        "/tandem_wire.v1.Cloud/Speculate",
    }


def test_token_check_is_constant_time_compare_and_exact() -> None:
    good = "a" * 43
    assert check_token(good, [("authorization", f"Bearer {good}")]) is None
    assert check_token(good, [("authorization", f"bearer {good}")]) is None
    assert check_token(good, [("authorization", f"Bearer {good}x")]) == "invalid bearer token"
    assert check_token(good, [("authorization", good)]) == "invalid bearer token"
    assert check_token(good, []) == "missing bearer token (authorization metadata)"
    with pytest.raises(ValueError):
        AuthInterceptor("")
    assert good not in repr(AuthInterceptor(good))


def test_a_token_alone_does_not_pass_a_port_without_client_certificates() -> None:
    """The interceptor's own certificate check: a port added without mTLS is not a way in."""
    token = "k" * 43

    async def main() -> tuple[grpc.StatusCode, str]:
        server = grpc.aio.server(interceptors=[AuthInterceptor(token)])
        coordinator_servicer = pb_grpc.CoordinatorServicer()
        pb_grpc.add_CoordinatorServicer_to_server(coordinator_servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                try:
                    await pb_grpc.CoordinatorStub(ch).ListNodes(
                        pb.ListNodesRequest(),
                        metadata=(("authorization", f"Bearer {token}"),),
                        timeout=5,
                    )
                except grpc.aio.AioRpcError as err:
                    return err.code(), err.details() or ""
            return grpc.StatusCode.OK, ""
        finally:
            await server.stop(0)

    code, details = run(main())
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "no verified certificate" in details


def test_explicit_plaintext_works_without_tls_or_token() -> None:
    plain = security.SecurityConfig(mode="plaintext")

    async def main() -> grpc.StatusCode:
        server = aio_server(plain)
        pb_grpc.add_CoordinatorServicer_to_server(pb_grpc.CoordinatorServicer(), server)
        address = bind(server, "127.0.0.1", 0)
        await server.start()
        try:
            async with aio_channel(address, security=plain) as ch:
                stub = pb_grpc.CoordinatorStub(ch)
                return await code_of(lambda: stub.ListNodes(pb.ListNodesRequest(), timeout=5))
        finally:
            await server.stop(0)

    assert run(main()) == grpc.StatusCode.UNIMPLEMENTED  # reached the (empty) servicer


def test_reflection_is_off_and_needs_dev_mode() -> None:
    async def main() -> grpc.StatusCode:
        coordinator, address = await serve()
        try:
            async with aio_channel(address) as ch:
                method = ch.unary_unary(
                    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
                )
                return await code_of(lambda: method(b"", timeout=5))
        finally:
            await coordinator.stop(0)

    assert run(main()) == grpc.StatusCode.UNIMPLEMENTED
    with pytest.raises(PermissionError, match="dev-mode"):
        security.enable_reflection(None, [], security.default())  # type: ignore[arg-type]


def test_tls_mode_needs_its_files_and_names_the_missing_one(tmp_path: Path) -> None:
    config = security.SecurityConfig(mode="tls", home=tmp_path / "empty")
    with pytest.raises(security.SecurityError, match="ca.pem is missing"):
        security.ca(config)
    with pytest.raises(security.SecurityError, match="token is missing"):
        security.token(config)


def test_core_handshake_lines_become_reasons() -> None:
    from node_runtime.tls_watch import explain

    prefix = b"I1130 11:28:21.894780    6714 ssl_transport_security.cc:2563] "
    line = b"Handshake failed with error SSL_ERROR_SSL: error:100000c0:SSL routines:"
    fields = explain(prefix + line + b"OPENSSL_internal:PEER_DID_NOT_RETURN_A_CERTIFICATE: x")
    assert fields is not None and fields["reason"] == "the client presented no certificate"
    assert fields["ssl_error"] == "SSL_ERROR_SSL"
    plain = explain(prefix + line + b"OPENSSL_internal:WRONG_VERSION_NUMBER: x")
    assert plain is not None and "plaintext" in plain["reason"]
    assert explain(prefix + b"Got goaway [2] err=UNAVAILABLE") is None


def test_a_state_directory_open_to_other_users_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "open"
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    with pytest.raises(security.SecurityError, match="chmod 700"):
        security.ca(security.SecurityConfig(home=home))
    home.chmod(0o700)
    assert security.ca(security.SecurityConfig(home=home)).cert_pem.startswith(b"-----BEGIN")


def test_the_cli_flag_sets_security_for_the_command_and_its_children(monkeypatch, capsys) -> None:
    from node_runtime import security
    from tandem.cli import main

    # setenv records the variable's state before the test, which teardown restores; a delenv
    # after main() would record main's "plaintext" and leak it to every later test's children
    monkeypatch.setenv("TANDEM_SECURITY", "auto")
    try:
        assert main(["--security", "plaintext", "profiles"]) == 0
        assert os.environ["TANDEM_SECURITY"] == "plaintext"  # what child processes inherit
        assert not security.default().secure
    finally:
        os.environ["TANDEM_SECURITY"] = "auto"
        security.set_default(None)
    assert security.default().secure  # auto again
    capsys.readouterr()
