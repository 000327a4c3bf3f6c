"""An edge's calls to a cloud name the edge (tandem-client-id), on every kind of RPC."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from edge_node.clouds import CloudDirectory
from node_runtime.serving import CLIENT_ID_KEY, aio_server, bind


def test_cloud_channels_send_the_edge_id_on_every_call_kind() -> None:
    seen: list[tuple[str, str | None]] = []

    def caller(context: grpc.aio.ServicerContext) -> str | None:
        return dict(context.invocation_metadata() or ()).get(CLIENT_ID_KEY)

    async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        seen.append(("unary", caller(context)))
        return request

    async def server_stream(
        request: bytes, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        seen.append(("server_stream", caller(context)))
        yield request

    async def bidi(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        seen.append(("bidi", caller(context)))
        async for r in requests:
            yield r

    async def main() -> None:
        server = aio_server()
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "t.T",
                    {
                        "U": grpc.unary_unary_rpc_method_handler(unary),
                        "S": grpc.unary_stream_rpc_method_handler(server_stream),
                        "B": grpc.stream_stream_rpc_method_handler(bidi),
                    },
                ),
            )
        )
        address = bind(server, "127.0.0.1", 0)
        await server.start()
        clouds = CloudDirectory("edge-a", static=[address])
        try:
            clouds.stub(address)
            channel = clouds._channels[address]  # the cached channel every Cloud stub uses
            assert await channel.unary_unary("/t.T/U")(b"x", timeout=5) == b"x"
            assert [m async for m in channel.unary_stream("/t.T/S")(b"y", timeout=5)] == [b"y"]
            call = channel.stream_stream("/t.T/B")(timeout=5)
            await call.write(b"z")  # the edge's speculation stream writes like this
            assert await call.read() == b"z"
            await call.done_writing()
        finally:
            await clouds.close()
            await server.stop(None)

    asyncio.run(main())
    assert seen == [("unary", "edge-a"), ("server_stream", "edge-a"), ("bidi", "edge-a")]
