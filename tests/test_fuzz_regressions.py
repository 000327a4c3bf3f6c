"""What the fuzzing found, each pinned on real servers on 127.0.0.1 (mTLS).

- Bytes that do not parse as the request message made gRPC answer UNKNOWN ("Unexpected <class
  'google.protobuf.message.DecodeError'>") on every unary method; inside a stream (Speculate) the
  status interceptor answered INTERNAL. Both are now INVALID_ARGUMENT naming the parse error.
- A handler that failed after its client had cancelled was logged as an internal error (with a
  traceback), for an answer no one could receive.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest

from cloud_node.node import start_cloud
from models.task import WordTokenizer
from models.torch_backend import load_torch
from node_runtime.serving import aio_channel, aio_server, bind

CORRUPT = b"\xff\xff\xff\xff"  # a truncated varint tag: no message parses from it


def run(coro: object) -> object:
    return asyncio.run(asyncio.wait_for(coro, 60))  # type: ignore[arg-type]


def test_unparseable_requests_get_invalid_argument_on_unary_and_streams() -> None:
    async def main() -> list[grpc.aio.AioRpcError]:
        tok = WordTokenizer()
        cloud = await start_cloud(load_torch("target"), tok.eos_id, tokenizer=tok)
        errors = []
        try:
            async with aio_channel(cloud.address) as ch:
                for path in ("/tandem_wire.v1.Cloud/Generate", "/tandem_wire.v1.Cloud/Metrics"):
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        await ch.unary_unary(path)(CORRUPT, timeout=10)
                    errors.append(info.value)
                call = ch.stream_stream("/tandem_wire.v1.Cloud/Speculate")(timeout=10)
                await call.write(CORRUPT)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call.read()
                errors.append(info.value)
            assert len(cloud.engine.sessions) == 0
        finally:
            await cloud.stop(0)
        return errors

    for err in run(main()):  # type: ignore[union-attr]
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
        assert "Error parsing message" in (err.details() or "")


def test_a_handler_failing_after_its_client_left_is_not_an_internal_error(caplog) -> None:
    left = asyncio.Event

    async def main() -> None:
        gone = left()

        async def handler(requests, context):  # type: ignore[no-untyped-def]
            async for _ in requests:
                yield b"first"
                try:
                    await asyncio.sleep(30)
                except asyncio.CancelledError:  # a failure on the way out of a cancelled call
                    gone.set()
                    raise RuntimeError("failed after the client left") from None

        server = aio_server()
        rpc = grpc.stream_stream_rpc_method_handler(handler)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.T", {"S": rpc}),))
        address = bind(server, "127.0.0.1", 0)
        await server.start()
        try:
            async with aio_channel(address) as ch:
                call = ch.stream_stream("/t.T/S")(timeout=10)
                await call.write(b"x")
                assert await call.read() == b"first"
                call.cancel()
                await asyncio.wait_for(gone.wait(), 10)
                await asyncio.sleep(0.1)  # the interceptor has handled the failure by now
        finally:
            await server.stop(0)

    with caplog.at_level(logging.INFO, logger="node_runtime.errors"):
        run(main())
    assert not [r for r in caplog.records if r.getMessage() == "rpc_internal_error"]
