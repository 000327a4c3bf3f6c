"""How an edge node finds cloud nodes: ask the coordinator, or use a fixed list."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import grpc

from tandem_wire.serving import aio_channel, log_event
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

log = logging.getLogger("tandem.edge")


class CloudDirectory:
    """Picks a cloud node for a request and keeps one channel per cloud address."""

    def __init__(
        self,
        edge_id: str,
        coordinator: str | None = None,
        static: Sequence[str] = (),
        timeout_s: float = 2.0,
    ) -> None:
        if not coordinator and not static:
            raise ValueError("need a coordinator address or at least one cloud address")
        self.edge_id = edge_id
        self.static = list(static)
        self.timeout_s = timeout_s
        self._coord = pb_grpc.CoordinatorStub(aio_channel(coordinator)) if coordinator else None
        self._channels: dict[str, grpc.aio.Channel] = {}

    def stub(self, address: str) -> pb_grpc.CloudStub:
        """A Cloud stub over a cached channel to ``address``."""
        if address not in self._channels:
            self._channels[address] = aio_channel(address)
        return pb_grpc.CloudStub(self._channels[address])

    async def pick(self, exclude: Sequence[str]) -> tuple[str, pb_grpc.CloudStub] | None:
        """A cloud node (its name and a stub) not in ``exclude``, or None when there is none."""
        if self._coord is not None:
            try:
                reply = await self._coord.PickCloud(
                    pb.PickCloudRequest(edge_id=self.edge_id, exclude=list(exclude)),
                    timeout=self.timeout_s,
                )
                if reply.cloud.address:
                    return reply.cloud.node_id or reply.cloud.address, self.stub(
                        reply.cloud.address
                    )
            except grpc.aio.AioRpcError as exc:
                log_event(log, "pick_cloud_failed", logging.WARNING, code=exc.code().name)
        for address in self.static:  # the fixed list backs up an absent coordinator
            if address not in exclude:
                return address, self.stub(address)
        return None

    async def close(self) -> None:
        """Close every channel."""
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()
