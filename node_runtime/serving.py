"""What every Tandem gRPC server and client shares: logs, servers, channels, ready files."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import grpc

from node_runtime.handlers import rewrap
from node_runtime.security import SecurityConfig, channel_credentials, server_credentials, token
from node_runtime.security import default as default_security
from tandem_wire.caps import GRPC_OPTIONS


class JsonLineFormatter(logging.Formatter):
    """One JSON object a line: ts, level, logger, event and the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(time.time(), 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str = "info", stream: Any = None) -> None:
    """Structured JSON lines on stderr for the whole process; under TLS (the default) also the
    reasons of refused TLS handshakes (``node_runtime.tls_watch``)."""
    if stream is None and default_security().secure:
        from node_runtime.tls_watch import watch_tls_failures  # it logs through this module

        watch_tls_failures()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLineFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log ``event`` with key/value fields that land as JSON keys."""
    logger.log(level, event, extra={"fields": fields})


class DrainGate(grpc.aio.ServerInterceptor):
    """Counts the calls a node is working on and, once draining, refuses new ones UNAVAILABLE.

    A graceful stop reports NOT_SERVING, sets ``draining``, waits (``wait_idle``) for the calls in
    progress to finish, then stops the server. Health checks and ``Metrics`` are not work: they
    are neither counted nor refused, so a draining node can still be watched.
    """

    EXEMPT = ("/grpc.health.v1.Health/", "/Metrics")  # method name prefixes and suffixes

    def __init__(self) -> None:
        self.draining = False  # refuse new calls
        self.inflight = 0  # calls in progress (exempt ones aside)

    def _exempt(self, method: str) -> bool:
        return method.startswith(self.EXEMPT[0]) or method.endswith(self.EXEMPT[1])

    async def wait_idle(self, timeout_s: float, poll_s: float = 0.05) -> bool:
        """Wait until no call is in progress; False when ``timeout_s`` passed first."""
        deadline = time.monotonic() + timeout_s
        while self.inflight > 0:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(poll_s)
        return True

    async def _refuse(self, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAVAILABLE, "node is draining: try another node")

    def _unary(self, fn: Any) -> Any:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if self.draining:
                await self._refuse(context)
            self.inflight += 1
            try:
                return await fn(request, context)
            finally:
                self.inflight -= 1

        return call

    def _stream(self, fn: Any) -> Any:
        import inspect

        if not inspect.isasyncgenfunction(fn):
            return self._unary(fn)

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if self.draining:
                await self._refuse(context)
            self.inflight += 1
            try:
                async for item in fn(request, context):
                    yield item
            finally:
                self.inflight -= 1

        return call

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        if handler is None or self._exempt(details.method):
            return handler
        return rewrap(handler, self._wrap)

    def _wrap(self, fn: Any, kind: str) -> Any:  # by the response: one message, or a stream
        return self._unary(fn) if kind.endswith("_unary") else self._stream(fn)


async def begin_drain(health: Any, gate: DrainGate | None) -> None:
    """Report NOT_SERVING (``health``: a grpc.health.v1 servicer, or None) and refuse new calls
    UNAVAILABLE; the calls in progress go on."""
    if health is not None:
        await health.enter_graceful_shutdown()
    if gate is not None:
        gate.draining = True


async def drain(health: Any, gate: DrainGate | None, timeout_s: float, role: str) -> bool:
    """``begin_drain``, then wait up to ``timeout_s`` for the calls in progress to end (logged as
    ``{role}_drained``); False when some were still running."""
    await begin_drain(health, gate)
    if gate is None:
        return True
    idle = await gate.wait_idle(timeout_s)
    log_event(logging.getLogger(f"tandem.{role}"), f"{role}_drained", idle=idle, left=gate.inflight)
    return idle


def aio_server(
    security: SecurityConfig | None = None, gate: DrainGate | None = None
) -> grpc.aio.Server:
    """An asyncio gRPC server with Tandem's message caps; unless ``security`` (default: the
    process's, ``node_runtime.security.default()``) is plaintext, every call must carry the
    cluster's bearer token and a verified client certificate. With ``gate``, the server can
    drain (see ``DrainGate``). Bind it with ``bind``."""
    from node_runtime.auth import AuthInterceptor  # both log through this module
    from node_runtime.errors import StatusInterceptor

    security = security or default_security()
    interceptors: list[Any] = [StatusInterceptor()]
    if gate is not None:  # innermost: counts the handler itself, refusals go through the others
        interceptors.append(gate)
    if security.secure:
        interceptors.insert(0, AuthInterceptor(token(security)))
    server = grpc.aio.server(options=GRPC_OPTIONS, interceptors=interceptors)
    server._tandem_security = security  # type: ignore[attr-defined]  # what ``bind`` uses
    return server


CLIENT_ID_KEY = "tandem-client-id"  # metadata naming the calling node, for servers' fair shares


def _with_client_id(details: grpc.aio.ClientCallDetails, client_id: str) -> Any:
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    metadata.add(CLIENT_ID_KEY, client_id)
    return details._replace(metadata=metadata)


class _ClientId:
    def __init__(self, client_id: str) -> None:
        self.client_id = client_id

    async def _call(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_client_id(details, self.client_id), request)


# grpc.aio files an interceptor under the first call kind it implements, so one class a kind.
class _UnaryUnaryClientId(_ClientId, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self._call(continuation, details, request)


class _UnaryStreamClientId(_ClientId, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self._call(continuation, details, request)


class _StreamUnaryClientId(_ClientId, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await self._call(continuation, details, requests)


class _StreamStreamClientId(_ClientId, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await self._call(continuation, details, requests)


def client_id_interceptors(client_id: str) -> list[Any]:
    """Interceptors that send ``tandem-client-id: <client_id>`` on every call kind, so a server
    shares its capacity per node rather than per connection (nodes behind one proxy share one)."""
    kinds = (_UnaryUnaryClientId, _UnaryStreamClientId, _StreamUnaryClientId, _StreamStreamClientId)
    return [kind(client_id) for kind in kinds]


def _merged(options: list[tuple[str, Any]] | None) -> list[tuple[str, Any]]:
    # A caller's option replaces the cap of the same name (gRPC would keep the first of two).
    return list({**dict(GRPC_OPTIONS), **dict(options or [])}.items())


def aio_channel(
    address: str,
    *,
    client_id: str | None = None,
    options: list[tuple[str, Any]] | None = None,
    security: SecurityConfig | None = None,
    identity: str | None = None,
) -> grpc.aio.Channel:
    """An asyncio channel to ``address`` with Tandem's message caps (plus ``options``); with
    ``client_id``, every call names its caller (``tandem-client-id``).

    Unless ``security`` (default: the process's) is plaintext, the channel is mTLS with the token
    on every call, presenting the certificate of ``identity`` (default ``client_id``: a node's id;
    neither: a plain client's)."""
    security = security or default_security()
    interceptors = client_id_interceptors(client_id) if client_id else None
    all_options = _merged(options)
    if not security.secure:
        return grpc.aio.insecure_channel(address, options=all_options, interceptors=interceptors)
    credentials = channel_credentials(security, identity or client_id)
    return grpc.aio.secure_channel(
        address, credentials, options=all_options, interceptors=interceptors
    )


def sync_channel(
    address: str,
    *,
    options: list[tuple[str, Any]] | None = None,
    security: SecurityConfig | None = None,
    identity: str | None = None,
) -> grpc.Channel:
    """A blocking channel to ``address``, secured as ``aio_channel`` secures its channels."""
    security = security or default_security()
    all_options = _merged(options)
    if not security.secure:
        return grpc.insecure_channel(address, options=all_options)
    return grpc.secure_channel(
        address, channel_credentials(security, identity), options=all_options
    )


def bind(server: grpc.aio.Server, host: str, port: int) -> str:
    """Bind ``host:port`` (port 0 picks a free one) and return the address actually bound: an mTLS
    port with a certificate valid for ``host``, or plaintext if the server's security says so."""
    security = getattr(server, "_tandem_security", None) or default_security()
    if security.secure:
        bound = server.add_secure_port(f"{host}:{port}", server_credentials(security, host))
    else:
        bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"could not bind {host}:{port}")
    return f"{host}:{bound}"


def write_ready(path: Path, address: str) -> None:
    """Tell a launcher this process listens at ``address``: JSON written whole, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps({"address": address, "pid": os.getpid()}))
    os.replace(partial, path)


def install_stop_signals(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set ``stop`` on the running loop."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
