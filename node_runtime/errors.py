"""Every exception a servicer lets escape becomes a gRPC status with a message, never UNKNOWN.

Servicers still abort with their own status where they know it. What reaches this interceptor is
mapped by type: bad input (``ValueError``) is INVALID_ARGUMENT, ``Overloaded`` is
RESOURCE_EXHAUSTED, ``PermissionError`` PERMISSION_DENIED, ``TimeoutError`` DEADLINE_EXCEEDED, a
``Precondition`` FAILED_PRECONDITION; anything else is INTERNAL with an error id that the server's
log line carries beside the traceback, so a client sees no Python class name.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from node_runtime.handlers import rewrap
from node_runtime.serving import log_event

log = logging.getLogger("node_runtime.errors")


class Overloaded(Exception):
    """The server is full: the client may retry later or elsewhere (RESOURCE_EXHAUSTED)."""


class Precondition(Exception):
    """The request is well formed but cannot run in this cluster's state (FAILED_PRECONDITION)."""


_BY_TYPE: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Precondition, grpc.StatusCode.FAILED_PRECONDITION),
    (PermissionError, grpc.StatusCode.PERMISSION_DENIED),
    (TimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (NotImplementedError, grpc.StatusCode.UNIMPLEMENTED),
    (ValueError, grpc.StatusCode.INVALID_ARGUMENT),
    (DecodeError, grpc.StatusCode.INVALID_ARGUMENT),  # a corrupt message inside a stream
)


def status_of(exc: BaseException, method: str) -> tuple[grpc.StatusCode, str]:
    """The status and message a client gets for ``exc`` raised inside ``method``."""
    for kind, code in _BY_TYPE:
        if isinstance(exc, kind):
            log_event(
                log, "rpc_failed", logging.WARNING, method=method, code=code.name, reason=str(exc)
            )
            return code, str(exc) or code.name.lower()
    error_id = uuid.uuid4().hex[:12]
    log.error(
        "rpc_internal_error",
        exc_info=exc,
        extra={"fields": {"method": method, "error_id": error_id}},
    )
    return grpc.StatusCode.INTERNAL, f"internal error (id {error_id}); the server logged it"


_PASS = (grpc.aio.AbortError, asyncio.CancelledError)


class _Malformed:
    """A request whose bytes did not parse: the handler answers INVALID_ARGUMENT, where gRPC
    itself would answer UNKNOWN."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _lenient(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError as exc:
            return _Malformed(str(exc))

    return parse


def _client_left(context: grpc.aio.ServicerContext) -> bool:
    """Whether the call was cancelled: by its client, or the task serving it was cancelled."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)  # Python >= 3.11
    return context.cancelled() or context.done() or bool(cancelling and cancelling())


async def _refuse_malformed(request: Any, context: grpc.aio.ServicerContext) -> None:
    if isinstance(request, _Malformed):
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT, f"malformed request: {request.reason}"
        )


def _wrap_unary(fn: Callable[..., Awaitable[Any]], method: str) -> Callable[..., Awaitable[Any]]:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await _refuse_malformed(request, context)
        try:
            return await fn(request, context)
        except _PASS:
            raise
        except Exception as exc:  # noqa: BLE001 - the point: nothing escapes unmapped
            await context.abort(*status_of(exc, method))

    return call


def _wrap_stream(fn: Callable[..., Any], method: str) -> Callable[..., Any]:
    if not inspect.isasyncgenfunction(fn):  # a handler that writes with context.write
        return _wrap_unary(fn, method)

    async def call(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await _refuse_malformed(request, context)
        try:
            async for item in fn(request, context):
                yield item
        except _PASS:
            raise
        except Exception as exc:  # noqa: BLE001
            if _client_left(context):  # no one to answer, nothing to log
                return
            await context.abort(*status_of(exc, method))

    return call


class StatusInterceptor(grpc.aio.ServerInterceptor):
    """Maps what a handler raises to a status; install it on every server (``aio_server`` does)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method

        def wrap(fn: Any, kind: str) -> Any:  # by the response: one message, or a stream
            return (_wrap_unary if kind.endswith("_unary") else _wrap_stream)(fn, method)

        return rewrap(handler, wrap, _lenient(handler.request_deserializer))
