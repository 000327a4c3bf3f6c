"""The cloud expert server over gRPC on 127.0.0.1: chunked streams, remote compute, refusals."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from cloud_node.experts import MAX_CHUNK_BYTES, ExpertBank, ExpertsServicer
from cloud_node.node import CloudConfig, start_cloud
from models.moe.layouts import ExpertKey
from models.moe.model import moe_dir
from node_runtime.serving import aio_channel, aio_server, bind
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

DIR = moe_dir()


async def _serve(bank: ExpertBank) -> tuple[grpc.aio.Server, str]:
    server = aio_server()
    pb_grpc.add_ExpertsServicer_to_server(ExpertsServicer(bank, "moe-target"), server)
    address = bind(server, "127.0.0.1", 0)
    await server.start()
    return server, address


def test_an_expert_streams_in_capped_chunks_and_arrives_whole() -> None:
    async def main() -> None:
        bank = ExpertBank(DIR, max_chunk_bytes=4096)
        server, address = await _serve(bank)
        try:
            async with aio_channel(address) as ch:
                stub = pb_grpc.ExpertsStub(ch)
                req = pb.FetchExpertRequest(id=pb.ExpertId(layer=2, expert=5))
                chunks = [c async for c in stub.FetchExpert(req, timeout=10)]
        finally:
            await server.stop(0)
        assert all(len(c.data) <= 4096 for c in chunks)
        want = bank.store.fetch(ExpertKey(2, 5))
        for part in ("gate", "up", "down"):
            got = b"".join(c.data for c in chunks if c.part == part)
            assert got == np.ascontiguousarray(want.part(part)).tobytes()
        assert len(chunks) > 3  # 98 KB in 4 KB chunks

    asyncio.run(main())


def test_bad_requests_get_invalid_argument_naming_the_field() -> None:
    async def main() -> None:
        server, address = await _serve(ExpertBank(DIR))
        try:
            async with aio_channel(address) as ch:
                stub = pb_grpc.ExpertsStub(ch)
                bad_layer = pb.FetchExpertRequest(id=pb.ExpertId(layer=9, expert=0))
                with pytest.raises(grpc.aio.AioRpcError) as e1:
                    _ = [c async for c in stub.FetchExpert(bad_layer, timeout=10)]
                short = pb.ComputeExpertsRequest(
                    layer=0, inputs=[pb.ExpertRowsMsg(expert=1, rows=2, data=b"\0" * 12)]
                )
                with pytest.raises(grpc.aio.AioRpcError) as e2:
                    await stub.ComputeExperts(short, timeout=10)
                row = np.ones((1, 128), np.float32).tobytes()
                ok = pb.ComputeExpertsRequest(
                    layer=0, inputs=[pb.ExpertRowsMsg(expert=1, rows=1, data=row)]
                )
                reply = await stub.ComputeExperts(ok, timeout=10)
        finally:
            await server.stop(0)
        assert e1.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "layer" in (e1.value.details() or "")
        assert e2.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "inputs" in (e2.value.details() or "")
        assert len(reply.outputs) == 1 and len(reply.outputs[0].data) == 128 * 4

    asyncio.run(main())


def test_chunks_never_exceed_one_mebibyte() -> None:
    with pytest.raises(ValueError, match="max_chunk_bytes"):
        ExpertBank(DIR, max_chunk_bytes=MAX_CHUNK_BYTES + 1)


def test_a_cloud_node_serves_experts_when_configured(target_lm) -> None:  # noqa: ANN001
    async def main() -> pb.ExpertManifest:
        node = await start_cloud(target_lm, 2, CloudConfig(experts="moe-target", scorers=()))
        try:
            async with aio_channel(node.address) as ch:
                stub = pb_grpc.ExpertsStub(ch)
                return await stub.Manifest(pb.ExpertManifestRequest(), timeout=10)
        finally:
            await node.stop()

    m = asyncio.run(main())
    assert (m.layout, m.n_layers, m.n_experts, m.d_model) == ("mixtral", 4, 8, 128)
    assert 0 < m.max_chunk_bytes <= MAX_CHUNK_BYTES
