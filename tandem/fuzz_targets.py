"""The fuzzed surfaces on real in-process servers on 127.0.0.1: a cloud (bundled target, steps),
an edge (bundled drafter) on it, a coordinator, an expert server (bundled MoE), the edge's OpenAI
HTTP API, and a telemetry subscriber fed frames directly (``handle``, as its socket loop does).

Every case goes through ``Harness.case``; ``Harness.check`` proves the servers still answer and
that the cloud's session count is back where it started.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from typing import Any

import aiohttp
import grpc
import msgpack

from tandem.fuzzing import Tally, classify, mutate, random_message, short
from tandem_wire.v1 import tandem_pb2 as pb

PROMPT = [1, 3, 20]
_SERVICES = ("Cloud", "Edge", "Coordinator", "Experts")
_SLOW = {"Solve", "SolveStream", "Reason", "Generate", "GenerateStep", "ScoreSteps", "Submit"}


def methods() -> list[tuple[str, Any]]:
    """(service, method descriptor) of every RPC of the four services."""
    out = []
    for svc in _SERVICES:
        desc = pb.DESCRIPTOR.services_by_name[svc]
        out.extend((svc, m) for m in desc.methods)
    return out


class Harness:
    """The running servers and the fuzzing cases against them."""

    def __init__(self, tally: Tally, timeout_s: float = 3.0) -> None:
        self.tally, self.timeout_s = tally, timeout_s
        self.stops: list[Any] = []
        self.channels: dict[str, grpc.aio.Channel] = {}

    async def start(self) -> None:
        """Start every server (the models load once)."""
        from cloud_node.experts import ExpertBank, ExpertsServicer
        from cloud_node.node import start_cloud
        from coordinator.service import serve
        from edge_node.node import EdgeNodeConfig, start_edge
        from models.moe.model import moe_dir
        from models.task import WordTokenizer
        from models.torch_backend import load_torch
        from node_runtime.openai_api.backend import EdgeBackend
        from node_runtime.openai_api.server import ApiConfig, ApiServer
        from node_runtime.serving import aio_channel, aio_server, bind
        from node_runtime.telemetry import TelemetrySubscriber
        from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

        tok = WordTokenizer()
        self.cloud = await start_cloud(load_torch("target"), tok.eos_id, tokenizer=tok)
        self.edge = await start_edge(
            load_torch("drafter"), tok, EdgeNodeConfig(clouds=(self.cloud.address,))
        )
        self.coordinator, caddr = await serve()
        experts = aio_server()
        pb_grpc.add_ExpertsServicer_to_server(
            ExpertsServicer(ExpertBank(moe_dir()), "moe"), experts
        )
        eaddr = bind(experts, "127.0.0.1", 0)
        await experts.start()
        self.api = ApiServer(EdgeBackend(self.edge.address, "drafter"), ApiConfig(port=0), key="")
        self.api_address = await self.api.start()
        self.http = aiohttp.ClientSession()
        self.subscriber = TelemetrySubscriber()
        self.stops = [self.api.stop, lambda: experts.stop(0), lambda: self.coordinator.stop(0)]
        self.stops += [lambda: self.edge.stop(0), lambda: self.cloud.stop(0)]
        addresses = {"Cloud": self.cloud.address, "Edge": self.edge.address}
        addresses.update(Coordinator=caddr, Experts=eaddr)
        for svc, address in addresses.items():
            self.channels[svc] = aio_channel(address)
        self.base_sessions = len(self.cloud.engine.sessions)

    async def stop(self) -> None:
        """Close the channels and stop every server."""
        await self.http.close()
        for ch in self.channels.values():
            await ch.close()
        for stop in self.stops:
            await stop()

    def record(self, surface: str, err: BaseException | None, case: Any) -> None:
        outcome, detail = classify(err)
        self.tally.add(surface, outcome, detail, short(case) if outcome != "ok" else "")

    # ------------------------------------------------------------------ gRPC
    async def grpc_case(self, rng: random.Random, svc: str, m: Any) -> None:
        """One random or mutated request (or stream of them) to ``svc.m``."""
        if svc == "Cloud" and m.name == "Speculate" and rng.random() < 0.5:
            await self.speculate_script(rng)
            return
        cls = m.input_type._concrete_class
        n = rng.randint(1, 5) if m.client_streaming else 1
        data = [random_message(cls, rng).SerializeToString() for _ in range(n)]
        if rng.random() < 0.35:
            data = [mutate(x, rng) for x in data]
        path = f"/{m.containing_service.full_name}/{m.name}"
        ch = self.channels[svc]
        timeout = self.timeout_s if m.name in _SLOW else 2.0
        vanish = rng.random() < 0.2
        err: BaseException | None = None
        try:
            if m.client_streaming:
                call = ch.stream_stream(path)(timeout=timeout)
                stop_at = rng.randrange(len(data)) if vanish else len(data)
                for i, x in enumerate(data):  # one reply per request, as a real client reads
                    await call.write(x)
                    if i == stop_at:
                        call.cancel()  # the client vanishes with its request unanswered
                        break
                    await call.read()
                else:
                    await call.done_writing()
                    while await call.read() is not grpc.aio.EOF:
                        pass
            elif m.server_streaming:
                call = ch.unary_stream(path)(data[0], timeout=timeout)
                async for _ in call:
                    if vanish:
                        call.cancel()
                        break
            else:
                await ch.unary_unary(path)(data[0], timeout=timeout)
        except asyncio.CancelledError:
            err = None  # our own cancellation: nothing the server answered
        except grpc.aio.AioRpcError as exc:
            err = await _final(call, exc) if m.client_streaming else exc
        except Exception as exc:  # noqa: BLE001 - anything else is a finding
            err = exc
        self.record(f"grpc.{svc}.{m.name}", err, (path, [x.hex()[:400] for x in data]))

    async def speculate_script(self, rng: random.Random) -> None:
        """A Speculate stream of valid-looking steps gone wrong: rounds out of order or replayed,
        wrong base positions, drafts out of range, verify after close, a vanishing client."""
        sid = f"s{rng.randrange(1 << 30)}"
        msgs = [pb.SpecRequest(open=pb.OpenSession(session_id=sid, prompt=PROMPT))]
        for _ in range(rng.randint(1, 6)):
            r = rng.random()
            if r < 0.15:
                msgs.append(pb.SpecRequest(close=pb.CloseSession(session_id=sid)))
                continue
            if r < 0.2:
                msgs.append(msgs[0])  # a second open of one id
                continue
            k = rng.choice((1, 2, 4, 8, 9, 64))
            draft = [rng.choice((0, 1, 5, 20, -1, 1 << 30)) for _ in range(k)]
            base = rng.choice((len(PROMPT), len(PROMPT) + 1, 0, -5, 2**31 - 1, 255))
            v = pb.VerifyRequest(
                session_id=rng.choice((sid, sid, "other", "")),
                round_id=rng.choice((0, 1, 1, 2, 2**64 - 1, 1 << 62)),
                base_position=base,
                draft=draft,
            )
            msgs.append(pb.SpecRequest(verify=v))
        vanish_at = rng.randrange(len(msgs) + 1) if rng.random() < 0.3 else -1
        from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

        call = pb_grpc.CloudStub(self.channels["Cloud"]).Speculate(timeout=self.timeout_s)
        err: BaseException | None = None
        try:
            for i, msg in enumerate(msgs):
                if i == vanish_at:
                    call.cancel()
                    break
                await call.write(msg)
                await call.read()
            else:
                await call.done_writing()
                await call.read()
        except asyncio.CancelledError:
            err = None
        except grpc.aio.AioRpcError as exc:
            err = await _final(call, exc)
        except Exception as exc:  # noqa: BLE001
            err = exc
        self.record("grpc.Cloud.Speculate.script", err, [str(x) for x in msgs])

    async def check(self) -> str:
        """'' when every server answers and the cloud holds no session beyond its start."""
        from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

        end = time.monotonic() + 5.0
        while len(self.cloud.engine.sessions) > self.base_sessions:
            if time.monotonic() > end:
                return f"session leak: {len(self.cloud.engine.sessions)} sessions open"
            await asyncio.sleep(0.01)
        try:
            await pb_grpc.CloudStub(self.channels["Cloud"]).Metrics(pb.MetricsRequest(), timeout=5)
            await pb_grpc.EdgeStub(self.channels["Edge"]).Metrics(pb.MetricsRequest(), timeout=5)
            stub = pb_grpc.CoordinatorStub(self.channels["Coordinator"])
            await stub.ListNodes(pb.ListNodesRequest(), timeout=5)
            stub2 = pb_grpc.ExpertsStub(self.channels["Experts"])
            await stub2.Manifest(pb.ExpertManifestRequest(), timeout=5)
            async with self.http.get(f"http://{self.api_address}/health") as resp:
                if resp.status != 200:
                    return f"api health {resp.status}"
        except Exception as exc:  # noqa: BLE001
            return f"a server stopped answering: {exc!r}"[:300]
        return ""

    # ------------------------------------------------------------------ telemetry
    def telemetry_case(self, rng: random.Random) -> None:
        """One random or mutated frame set given to the subscriber; it must never raise."""
        from node_runtime.telemetry import TOPIC, Reading, Sample, encode_sample

        r = rng.random()
        if r < 0.4:
            sample = Sample(
                rng.choice(("cloud-1", "edge-1", "x" * rng.choice((1, 64)))),
                rng.choice(("cloud", "edge")),
                "e1",
                rng.randint(0, 50),
                time.time(),
                time.monotonic(),
                Reading(active_sessions=rng.randint(0, 9), busy_fraction=rng.random()),
            )
            payload = (
                mutate(encode_sample(sample), rng) if rng.random() < 0.8 else encode_sample(sample)
            )
        elif r < 0.8:
            payload = msgpack.packb(_random_obj(rng, 0), use_bin_type=True)
        else:
            payload = rng.randbytes(rng.choice((0, 1, 10, 300, 70_000)))
        frames = [TOPIC, payload]
        if rng.random() < 0.15:
            frames = rng.choice(([payload], [TOPIC], [b"x", payload], [TOPIC, payload, b""]))
        sender = rng.choice((None, None, "cloud-1", "edge-9"))
        try:
            taken = self.subscriber.handle(frames, sender)
        except Exception as exc:  # noqa: BLE001 - handle must drop (and count), never raise
            self.record("telemetry.frame", exc, frames)
            return
        self.tally.add("telemetry.frame", "ok" if taken is not None else "clean")

    # ------------------------------------------------------------------ HTTP
    async def http_case(self, rng: random.Random) -> None:
        """One malformed, mistyped or oversized request to the OpenAI API."""
        path = rng.choice(("/v1/chat/completions", "/v1/completions", "/v1/models/x%00"))
        valid: dict[str, Any] = {"model": "drafter", "max_tokens": 4}
        if "chat" in path:
            valid["messages"] = [{"role": "user", "content": "Q 5 + 1 ?"}]
        else:
            valid["prompt"] = "Q 5 + 1 ?"
        r = rng.random()
        if r < 0.35:
            body = dict(valid)
            for _ in range(rng.randint(1, 3)):
                key = rng.choice([*valid, "n", "stream", "temperature", "top_p", "stop", "seed"])
                body[key] = _random_obj(rng, 1)
            data = json.dumps(body, allow_nan=True).encode()
        elif r < 0.65:
            data = mutate(json.dumps(valid).encode(), rng)
        elif r < 0.9:
            data = rng.randbytes(rng.choice((0, 1, 20, 500)))
        else:
            data = b'{"model": "' + b"a" * (1 << 20) + b'"}'  # over the body cap
        err: BaseException | None = None
        status = 0
        try:
            async with self.http.post(
                f"http://{self.api_address}{path}",
                data=data,
                headers={"Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=self.timeout_s + 5),
            ) as resp:
                status = resp.status
                text = await resp.text()
            if status >= 500 or (status >= 400 and "error" not in text):
                err = RuntimeError(f"HTTP {status}: {text[:300]}")
        except asyncio.TimeoutError:
            err = None  # our own deadline
        except Exception as exc:  # noqa: BLE001
            err = exc
        outcome = "ok" if err is None else ("unknown" if status >= 500 else "crash")
        if err is None and status >= 400:
            outcome = "clean"
        detail = f"HTTP {status}" if outcome == "clean" else (repr(err)[:300] if err else "")
        self.tally.add("http.openai", outcome, detail, short(data))


async def _final(call: Any, exc: grpc.aio.AioRpcError) -> grpc.aio.AioRpcError | None:
    """The status the server ended a stream with. A write racing the server's own end of the
    call fails on the client with "Internal error from Core"; the call's status is the answer."""
    try:
        code = await asyncio.wait_for(call.code(), 5)
        details = await call.details()
    except Exception:  # noqa: BLE001 - no status to read: keep what the client saw
        return exc
    if code == grpc.StatusCode.OK:
        return None
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


def _random_obj(rng: random.Random, depth: int) -> Any:
    """A random JSON/msgpack-able value: the wrong types a hostile client sends."""
    r = rng.random()
    if depth > 2 or r < 0.5:
        return rng.choice(
            (None, True, 0, -1, 2**64 - 1 if rng.random() < 0.1 else 7, 1.5, math.inf, "", "x" * 50)
        )
    if r < 0.75:
        return [_random_obj(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    keys = ("node_id", "role", "seq", "epoch", "ts", "reading", "acceptance", "extra", "a")
    return {rng.choice(keys): _random_obj(rng, depth + 1) for _ in range(rng.randint(0, 6))}
