"""Whatever a handler raises reaches the client as a status with a message, never UNKNOWN."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from node_runtime.errors import Overloaded, Precondition
from node_runtime.serving import aio_channel, aio_server, bind

RAISES = {
    "value": ValueError("max_new_tokens: must be 0 to 256"),
    "full": Overloaded("queue full: 64 waiting"),
    "pre": Precondition("tokenizers differ"),
    "bug": RuntimeError("a bug with a secret class name"),
}


def _server() -> grpc.aio.Server:
    async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        raise RAISES[request.decode()]

    async def stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        yield b"first"
        raise RAISES[request.decode()]

    server = aio_server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "t.T",
                {
                    "U": grpc.unary_unary_rpc_method_handler(unary),
                    "S": grpc.unary_stream_rpc_method_handler(stream),
                },
            ),
        )
    )
    return server


@pytest.mark.parametrize(
    "kind,code",
    [
        ("value", grpc.StatusCode.INVALID_ARGUMENT),
        ("full", grpc.StatusCode.RESOURCE_EXHAUSTED),
        ("pre", grpc.StatusCode.FAILED_PRECONDITION),
        ("bug", grpc.StatusCode.INTERNAL),
    ],
)
def test_exceptions_map_to_statuses(kind: str, code: grpc.StatusCode) -> None:
    async def main() -> None:
        server = _server()
        address = bind(server, "127.0.0.1", 0)
        await server.start()
        try:
            async with aio_channel(address) as ch:
                for name in ("U", "S"):
                    call = ch.unary_stream(f"/t.T/{name}") if name == "S" else None
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        if call is None:
                            await ch.unary_unary("/t.T/U")(kind.encode(), timeout=5)
                        else:
                            got = [m async for m in call(kind.encode(), timeout=5)]
                            assert got == [b"first"]
                    assert err.value.code() == code
                    detail = err.value.details() or ""
                    assert "RuntimeError" not in detail and "Unexpected" not in detail
                    if kind != "bug":
                        assert detail == str(RAISES[kind])
                    else:
                        assert "internal error (id " in detail
        finally:
            await server.stop(None)

    asyncio.run(main())
