"""A real cluster in one process for the HTTP API tests: cloud, edge, coordinator and the API.

Everything runs on an event loop in a background thread, so the tests drive it with the official
synchronous ``openai`` client (and ``urllib``) from the test thread, as a user would.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any

from cloud_node.node import model_info, start_cloud
from coordinator.http import start_http
from coordinator.registry import CoordinatorConfig
from coordinator.service import serve
from edge_node.node import EdgeNodeConfig, start_edge
from models.task import WordTokenizer
from models.torch_backend import load_torch
from node_runtime.agent import NodeAgent
from node_runtime.openai_api.backend import EdgeBackend
from node_runtime.openai_api.server import ApiConfig, ApiServer
from tandem_wire.v1 import tandem_pb2 as pb

KEY = "test-key-0123456789"


class LoopThread:
    """An event loop running in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 60.0) -> Any:
        """Run ``coro`` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        """Stop the loop and its thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class EdgeCluster:
    """A cloud (bundled target), an edge (bundled drafter) and the edge's API on loopback; with
    ``front_door``, also a coordinator both register with, serving the API over its job API."""

    def __init__(self, key: str = "", front_door: bool = False) -> None:
        self.threads = LoopThread()
        self.key = key
        self.front_door = front_door
        self.agents: list[NodeAgent] = []
        self.coordinator: Any = None
        self.http: Any = None
        self.threads.run(self._start())

    async def _start(self) -> None:
        tok = WordTokenizer()
        caddr = ""
        if self.front_door:
            self.coordinator, caddr = await serve(config=CoordinatorConfig(api=ApiConfig(port=0)))
            self.http = await start_http(self.coordinator, caddr)
        self.coordinator_address = caddr
        target, drafter = load_torch("target"), load_torch("drafter")
        self.cloud = await start_cloud(target, tok.eos_id, tokenizer=tok)
        edge_cfg = EdgeNodeConfig(clouds=(self.cloud.address,), coordinator=caddr)
        self.edge = await start_edge(drafter, tok, edge_cfg)
        backend = EdgeBackend(self.edge.address, "drafter")
        self.api = ApiServer(backend, ApiConfig(port=0), self.edge.servicer.metrics, key=self.key)
        self.address = await self.api.start()
        if self.front_door:
            for node_id, role, address, model in (
                ("cloud-a", pb.ROLE_CLOUD, self.cloud.address, model_info(target, "torch")),
                ("edge-a", pb.ROLE_EDGE, self.edge.address, pb.ModelInfo(name="drafter")),
            ):
                info = pb.NodeInfo(node_id=node_id, role=role, address=address, models=[model])
                self.agents.append(NodeAgent(caddr, info))
            for agent in self.agents:
                assert await agent.start(wait_s=5)

    @property
    def base_url(self) -> str:
        """The edge API's root, as the openai client takes it."""
        return f"http://{self.address}/v1"

    @property
    def front_url(self) -> str:
        """The coordinator API's root."""
        return f"http://{self.http.address}/v1"

    def close(self) -> None:
        """Stop everything."""

        async def stop() -> None:
            for agent in self.agents:
                await agent.stop()
            await self.api.stop()
            await self.edge.stop()
            await self.cloud.stop()
            if self.http is not None:
                await self.http.stop()
                await self.coordinator.stop(0)

        self.threads.run(stop())
        self.threads.close()
