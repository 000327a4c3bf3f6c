"""Rewrapping a gRPC method handler, for the server interceptors (status, auth, drain gate)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
FACTORIES = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}


def kind_of(handler: grpc.RpcMethodHandler) -> str:
    """The handler's kind, one of ``KINDS`` (request, then response: unary or stream)."""
    return next(k for k in KINDS if getattr(handler, k))


def rewrap(
    handler: grpc.RpcMethodHandler,
    wrap: Callable[[Any, str], Any],
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> grpc.RpcMethodHandler:
    """``handler`` with its behaviour replaced by ``wrap(behaviour, kind)`` and the same
    serializers; ``request_deserializer``, when given, replaces the handler's for the kinds with
    a single request."""
    kind = kind_of(handler)
    deserializer = handler.request_deserializer
    if request_deserializer is not None and kind.startswith("unary_"):
        deserializer = request_deserializer
    return FACTORIES[kind](
        wrap(getattr(handler, kind), kind),
        request_deserializer=deserializer,
        response_serializer=handler.response_serializer,
    )
