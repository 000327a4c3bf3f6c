"""The server side of token auth: every RPC kind checks the bearer token and the peer certificate.

``AuthInterceptor`` runs before any handler. A call without ``authorization: Bearer <token>``,
or with another token, ends UNAUTHENTICATED with a message, whatever its kind (unary,
server-streaming, client-streaming, bidi); tokens are compared in constant time
(``hmac.compare_digest``). On a TLS port it also checks that the peer presented a verified
certificate (``auth_context``), so a port added without client-certificate checks cannot pass as
secure. Each refusal is logged with the method, the peer and the reason, never the token.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from node_runtime.handlers import rewrap
from node_runtime.serving import log_event

log = logging.getLogger("node_runtime.auth")

AUTH_KEY = "authorization"
BEARER = "bearer "


def bearer_token(metadata: Any) -> str | None:
    """The token of the ``authorization: Bearer <token>`` entry of ``metadata``, if any."""
    for key, value in metadata or ():
        if key.lower() == AUTH_KEY:
            text = value.decode() if isinstance(value, bytes) else str(value)
            if text[: len(BEARER)].lower() == BEARER:
                return text[len(BEARER) :].strip()
            return ""
    return None


def check_token(expected: str, metadata: Any) -> str | None:
    """None when ``metadata`` carries ``expected``, else why not (safe to log and to return)."""
    got = bearer_token(metadata)
    if got is None:
        return "missing bearer token (authorization metadata)"
    # Compare bytes of equal type; compare_digest's time does not depend on where they differ.
    if not hmac.compare_digest(got.encode(), expected.encode()):
        return "invalid bearer token"
    return None


def _refusal(kind: str, method: str, reason: str) -> Callable[..., Any]:
    async def refuse(context: grpc.aio.ServicerContext) -> None:
        fields = {"method": method, "peer": context.peer(), "reason": reason}
        log_event(log, "rpc_unauthenticated", logging.WARNING, **fields)
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await refuse(context)

    async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await refuse(context)
        yield None  # never reached: makes this an async generator like the handler it stands for

    return stream if kind in ("unary_stream", "stream_stream") else unary


def _checked(fn: Callable[..., Any], kind: str, method: str) -> Callable[..., Any]:
    # The peer certificate is only visible on the context, so it is checked inside the handler.
    async def peer_ok(context: grpc.aio.ServicerContext) -> bool:
        auth = context.auth_context() or {}
        if auth.get("x509_pem_cert"):
            return True
        security = b"".join(auth.get("transport_security_type", [])).decode() or "none"
        reason = f"client presented no verified certificate (transport security: {security})"
        log_event(
            log,
            "rpc_unauthenticated",
            logging.WARNING,
            method=method,
            peer=context.peer(),
            reason=reason,
        )
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)
        return False

    if kind in ("unary_stream", "stream_stream"):

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            if await peer_ok(context):
                result = fn(request, context)
                if hasattr(result, "__aiter__"):
                    async for item in result:
                        yield item
                else:  # a handler that writes with context.write
                    await result

        return stream

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if await peer_ok(context):
            return await fn(request, context)
        return None

    return unary


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without the cluster's bearer token (and, with ``require_cert``, without a
    verified client certificate) with UNAUTHENTICATED and a message; logs each refusal."""

    def __init__(self, token: str, require_cert: bool = True) -> None:
        if not token:
            raise ValueError("an empty token would let every caller in")
        self._token = token
        self._require_cert = require_cert
        self.refused = 0  # calls refused so far, for tests and metrics

    def __repr__(self) -> str:  # never print the token
        return f"AuthInterceptor(require_cert={self._require_cert})"

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method
        reason = check_token(self._token, details.invocation_metadata)
        if reason is not None:
            self.refused += 1
            return rewrap(handler, lambda _fn, kind: _refusal(kind, method, reason))
        if not self._require_cert:
            return handler
        return rewrap(handler, lambda fn, kind: _checked(fn, kind, method))
