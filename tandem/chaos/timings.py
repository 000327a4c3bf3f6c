"""Timed properties on the live chaos cluster: a cancelled request frees its sessions everywhere,
and the OpenAI HTTP API refuses requests without the right key."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import grpc

from node_runtime.serving import aio_channel
from tandem.chaos.faults import CLOUDS, EDGE, Env
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc


async def _busy(env: Env, stubs: dict[str, Any]) -> dict[str, float]:
    """Sessions on each cloud and requests on the edge, from their Metrics RPCs, asked at once
    (-1: no answer)."""

    async def one(name: str) -> float:
        key = "active_requests" if name == EDGE else "sessions_active"
        try:
            reply = await stubs[name].Metrics(pb.MetricsRequest(), timeout=1.0)
        except grpc.aio.AioRpcError:
            return -1.0
        return reply.values.get(key, 0.0)

    names = [*CLOUDS, EDGE]
    return dict(zip(names, await asyncio.gather(*(one(n) for n in names)), strict=True))


async def cancel_once(env: Env, limit_s: float = 10.0, attempts: int = 10) -> dict[str, Any]:
    """Start a streaming request and cancel it once tokens flow, while the nodes hold it (their
    Metrics say so, and the edge never logs it done); time until the edge holds no request and no
    cloud a session. A request that finished before the cancel is tried again."""
    channels = {n: aio_channel(env.address(n)) for n in (*CLOUDS, EDGE)}
    stubs: dict[str, Any] = {n: pb_grpc.CloudStub(ch) for n, ch in channels.items()}
    stubs[EDGE] = pb_grpc.EdgeStub(channels[EDGE])
    try:
        for attempt in range(attempts):
            got = await _cancel(env, stubs, limit_s)
            rid = got["request_id"]
            done = [
                e
                for e in env.cluster.events(EDGE)
                if e.get("event") == "request_done" and e.get("request_id") == rid
            ]
            held = sum(v for v in got["held_at_cancel"].values() if v > 0)
            if held and not done:
                return {**got, "attempts": attempt + 1}
        return {**got, "free_s": None, "attempts": attempts, "why": "never caught in flight"}
    finally:
        for ch in channels.values():
            await ch.close()


async def _cancel(env: Env, stubs: dict[str, Any], limit_s: float) -> dict[str, Any]:
    rid = f"cancel-{time.time_ns()}"
    req = pb.SolveRequest(
        prompt=env.load._question(),
        mode=pb.MODE_TOKEN_SPECULATION,
        max_new_tokens=200,
        request_id=rid,
    )
    call = stubs[EDGE].SolveStream(req, timeout=30)
    async for ev in call:
        if ev.tokens:
            break
    held = await _busy(env, stubs)
    t0 = time.monotonic()
    call.cancel()
    now = held
    while time.monotonic() - t0 < limit_s:
        now = await _busy(env, stubs)
        if all(v == 0 for v in now.values()):
            return {"request_id": rid, "free_s": time.monotonic() - t0, "held_at_cancel": held}
        await asyncio.sleep(0.01)
    return {"request_id": rid, "free_s": None, "held_at_cancel": held, "still_held": now}


async def cancel_timings(env: Env, n: int) -> list[dict[str, Any]]:
    """``n`` cancellations, one at a time, on an otherwise idle cluster."""
    out = []
    for _ in range(n):
        out.append(await cancel_once(env))
        await asyncio.sleep(0.2)
    return out


async def http_auth(api: str, key: str, prompt: str) -> list[dict[str, Any]]:
    """Every OpenAI route without a key, with a wrong key and with a malformed header, then with
    the right key as the control (which must be accepted, or the probe proves nothing)."""
    routes = [
        ("GET", "/v1/models", None),
        (
            "POST",
            "/v1/chat/completions",
            {"model": "tandem", "messages": [{"role": "user", "content": prompt}], "max_tokens": 4},
        ),
        ("POST", "/v1/completions", {"model": "tandem", "prompt": prompt, "max_tokens": 4}),
    ]
    headers = {
        "none": {},
        "wrong_key": {"Authorization": "Bearer not-the-key"},
        "not_bearer": {"Authorization": key},
        "empty_bearer": {"Authorization": "Bearer "},
        "right_key": {"Authorization": f"Bearer {key}"},
    }
    rows = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        async with http.get(f"http://{api}/v1/models", headers=headers["right_key"]) as r:
            model = (await r.json())["data"][0]["id"]
        for _, _, body in routes:
            if body is not None:
                body["model"] = model
        for method, path, body in routes:
            for name, h in headers.items():
                async with http.request(method, f"http://{api}{path}", json=body, headers=h) as r:
                    status = r.status
                    text = (await r.text())[:160]
                rows.append(
                    {
                        "plane": "http",
                        "case": f"{method} {path} {name}",
                        "status": status,
                        "accepted": status < 400,
                        "control": name == "right_key",
                        "body": text,
                    }
                )
    return rows
