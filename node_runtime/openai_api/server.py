"""The OpenAI-compatible HTTP API: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``.

Served on the coordinator (the cluster's front door, over the job API) and on each edge node (an
agent on the device talks to localhost), with ``/metrics`` beside it. Errors leave in OpenAI's
shape with the matching status. On a loopback address the API may run without a key; on any other
it refuses to start without one unless ``allow_unauthenticated`` says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import grpc
from aiohttp import web

from node_runtime.metrics import NodeMetrics, bound_port, metrics_handler
from node_runtime.openai_api import responses as rs
from node_runtime.openai_api.backend import Backend, Delta, NoEdge
from node_runtime.openai_api.schema import ApiError, ApiRequest, parse_request
from node_runtime.openai_api.settings import ApiConfig
from node_runtime.openai_api.templates import Parsed, parser_for
from node_runtime.openai_api.text import StopScanner
from node_runtime.serving import log_event

log = logging.getLogger("node_runtime.openai_api")
ANY_MODEL = "tandem"  # a model id every node accepts: the cluster picks
_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error"),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid_request_error"),
    grpc.StatusCode.NOT_FOUND: (404, "invalid_request_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout"),
}


def from_grpc(err: grpc.aio.AioRpcError) -> ApiError:
    """The API error for a failed call to a node."""
    status, kind = _STATUS.get(err.code(), (500, "server_error"))
    return ApiError(status, err.details() or err.code().name, kind=kind, code=err.code().name)


Sink = Callable[[dict[str, Any]], Awaitable[None]]


class OpenAIApi:
    """The request handlers over one backend."""

    def __init__(
        self, backend: Backend, config: ApiConfig, metrics: NodeMetrics | None = None
    ) -> None:
        self.backend, self.config, self.metrics = backend, config, metrics

    # ---------------------------------------------------------------- routes
    async def list_models(self, _request: web.Request) -> web.Response:
        """``GET /v1/models``."""
        data = [_model_card(m) for m in [ANY_MODEL, *await self.backend.models()]]
        return web.json_response({"object": "list", "data": data})

    async def get_model(self, request: web.Request) -> web.Response:
        """``GET /v1/models/{model}``."""
        model = request.match_info["model"]
        await self._known(model)
        return web.json_response(_model_card(model))

    async def chat(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/chat/completions``."""
        return await self._complete(request, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/completions``."""
        return await self._complete(request, chat=False)

    # ---------------------------------------------------------------- work
    async def _known(self, model: str) -> None:
        if model != ANY_MODEL and model not in await self.backend.models():
            raise ApiError(
                404,
                f"The model `{model}` does not exist or is not served here",
                param="model",
                code="model_not_found",
            )

    async def _complete(self, request: web.Request, chat: bool) -> web.StreamResponse:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ApiError(400, "the body is not valid JSON") from None
        req = await self._checked(body, chat)
        rid = rs.new_id(chat)
        if req.stream and req.reasoning is None:
            return await self._stream(request, req, rid)
        results = await self._results(req)
        if req.stream:  # a reasoning request asked to stream: one chunk with the whole text
            return await self._stream_done(request, req, rid, results)
        build = rs.chat_response if chat else rs.completion_response
        return web.json_response(build(rid, req.gen.model, results))

    async def create(self, body: dict[str, Any], chat: bool = True) -> dict[str, Any]:
        """A completion's response body, without HTTP (the edge's agent loop calls this);
        ApiError as the HTTP layer would answer it."""
        req = await self._checked({**body, "stream": False}, chat)
        build = rs.chat_response if chat else rs.completion_response
        return build(rs.new_id(chat), req.gen.model, await self._results(req))

    async def _checked(self, body: Any, chat: bool) -> ApiRequest:
        req = parse_request(body, chat, self.config.max_n, self.config.max_tokens)
        await self._known(req.gen.model)
        return replace(req, gen=replace(req.gen, timeout_s=self.config.timeout_s))

    async def _results(self, req: ApiRequest) -> list[rs.ChoiceResult]:
        if req.reasoning is not None:
            return [await self._reason(req)]
        return list(await asyncio.gather(*(self._choice(req, i) for i in range(req.n))))

    async def _reason(self, req: ApiRequest) -> rs.ChoiceResult:
        assert req.reasoning is not None
        if req.chat:
            assert req.gen.chat is not None
            users = [m for m in req.gen.chat.messages if m.get("role") == "user"]
            question = str(users[-1].get("content") or "") if users else ""
        else:
            question = req.gen.prompt
        try:
            reply = await self.backend.reason(question, req.reasoning, req.gen)
        except grpc.aio.AioRpcError as err:
            raise from_grpc(err) from None
        except NoEdge as err:
            raise ApiError(503, str(err), kind="service_unavailable") from None
        account = rs.reason_account(reply, req.reasoning.strategy)
        tokens = reply.account.drafted_tokens + reply.account.cloud_tokens
        return rs.ChoiceResult(0, Parsed(reply.text), "stop", tokens, 0, account)

    async def _choice(
        self, req: ApiRequest, index: int, sink: Sink | None = None
    ) -> rs.ChoiceResult:
        """Run one choice; with ``sink``, send its chunks as they come."""
        gen = replace(req.gen, seed=(req.gen.seed + index) % (1 << 64))
        chunker = rs.Chunker("", req.gen.model, req.chat)  # ids are set by the sink's caller
        stops: StopScanner | None = None
        tool_stops: tuple[str, ...] = ()
        template, parts, tokens, done, started = "", [], 0, None, False
        stream = self.backend.stream(gen)
        try:
            async for item in stream:
                if not started and sink is not None and req.chat:
                    await sink(chunker.role(index))
                started = True
                if not isinstance(item, Delta):
                    done = item
                    template = item.template or template
                    break
                template = item.template or template
                if stops is None:
                    tool_stops = parser_for(template).tool_stops() if req.tools else ()
                    stops = StopScanner((*req.stops, *tool_stops))
                tokens += item.tokens
                out = stops.feed(item.text)
                if out:
                    parts.append(out)
                    if sink is not None and not req.tools:
                        await sink(chunker.text(index, out))
                # a user's stop cancels the generation at once; a tool call's end waits for the
                # reply and its account: the edge ends it there (one-token ends) or soon after
                if stops.stopped is not None and stops.stopped not in tool_stops:
                    break
        except grpc.aio.AioRpcError as err:
            raise from_grpc(err) from None
        except NoEdge as err:
            raise ApiError(503, str(err), kind="service_unavailable") from None
        finally:
            await stream.aclose()  # cancels the call when a stop sequence cut it
        if stops is not None and stops.stopped is None:
            tail = stops.flush()
            parts.append(tail)
            if sink is not None and tail and not req.tools:
                await sink(chunker.text(index, tail))
        text = "".join(parts)
        parsed = parser_for(template).parse(text, req.tools) if req.tools else Parsed(text)
        stop = stops.stopped if stops is not None else None
        reply = done.reply if done is not None else None
        if parsed.tool_calls:
            finish = "tool_calls"
        elif (
            reply is not None
            and gen.max_tokens
            and reply.account.generated_tokens >= gen.max_tokens
        ):
            finish = "length"
        else:
            finish = "stop"
        account = rs.account(reply, done.edge if done else "", template, stop)
        prompt_tokens = reply.account.prompt_tokens if reply is not None else 0
        completion = reply.account.generated_tokens if reply is not None else tokens
        if self.metrics is not None and reply is None:
            self.metrics.observe_failure("chat" if req.chat else "completion", "cut_by_stop")
        return rs.ChoiceResult(index, parsed, finish, completion, prompt_tokens, account)

    async def _stream(self, request: web.Request, req: ApiRequest, rid: str) -> web.StreamResponse:
        """Server-sent events; an error before the first chunk is answered as an HTTP error."""
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        chunker = rs.Chunker(rid, req.gen.model, req.chat)

        async def sink(chunk: dict[str, Any]) -> None:
            chunk.update(id=rid, created=chunker.created)
            await queue.put(("chunk", chunk))

        async def run(index: int) -> None:
            try:
                await queue.put(("done", await self._choice(req, index, sink)))
            except ApiError as err:
                await queue.put(("error", err))

        tasks = [asyncio.ensure_future(run(i)) for i in range(req.n)]
        response: web.StreamResponse | None = None
        results: list[rs.ChoiceResult] = []
        try:
            while len(results) < req.n:
                kind, value = await queue.get()
                if kind == "error":
                    if response is None:
                        raise value
                    await _send(response, value.body())
                    break
                if response is None:
                    response = await _start_sse(request)
                if kind == "chunk":
                    await _send(response, value)
                    continue
                results.append(value)
                for chunk in self._closing(chunker, req, value):
                    await _send(response, chunk)
            if response is not None and len(results) == req.n and req.include_usage:
                await _send(response, chunker.usage(sorted(results, key=lambda c: c.index)))
            assert response is not None
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except ConnectionResetError:  # the client left: its choices are cancelled below
            log_event(log, "api_client_gone", logging.DEBUG, id=rid)
        finally:
            for t in tasks:
                t.cancel()
        assert response is not None
        return response

    def _closing(
        self, chunker: rs.Chunker, req: ApiRequest, c: rs.ChoiceResult
    ) -> list[dict[str, Any]]:
        """What ends a choice's stream: its buffered content or tool calls, and its finish."""
        out: list[dict[str, Any]] = []
        if req.tools and c.parsed.tool_calls:
            out.extend(chunker.tool_calls(c.index, c.parsed))
        elif req.tools and c.parsed.content:
            out.append(chunker.text(c.index, c.parsed.content))
        out.append(chunker.finish(c, with_account=not req.include_usage))
        return out

    async def _stream_done(
        self, request: web.Request, req: ApiRequest, rid: str, results: list[rs.ChoiceResult]
    ) -> web.StreamResponse:
        chunker = rs.Chunker(rid, req.gen.model, req.chat)
        response = await _start_sse(request)
        for c in results:
            if req.chat:
                await _send(response, chunker.role(c.index))
            await _send(response, chunker.text(c.index, c.parsed.content or ""))
            await _send(response, chunker.finish(c, with_account=not req.include_usage))
        if req.include_usage:
            await _send(response, chunker.usage(results))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def _model_card(model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": 0, "owned_by": "tandem"}


async def _start_sse(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    return response


async def _send(response: web.StreamResponse, obj: dict[str, Any]) -> None:
    await response.write(f"data: {json.dumps(obj)}\n\n".encode())


def _error_response(err: ApiError) -> web.Response:
    return web.json_response(err.body(), status=err.status)


def build_app(
    backend: Backend, config: ApiConfig, metrics: NodeMetrics | None = None, key: str = ""
) -> web.Application:
    """The aiohttp application: routes, key check, OpenAI-shaped errors, request metrics."""
    api = OpenAIApi(backend, config, metrics)

    @web.middleware
    async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
        t0 = time.perf_counter()
        route = (
            request.match_info.route.resource.canonical
            if request.match_info.route.resource
            else "?"
        )
        status = 500
        try:
            if key and request.path.startswith("/v1/"):
                sent = request.headers.get("Authorization", "")
                if not hmac.compare_digest(sent.encode(), f"Bearer {key}".encode()):
                    raise ApiError(
                        401,
                        "Incorrect API key provided",
                        code="invalid_api_key",
                        kind="authentication_error",
                    )
            response = await handler(request)
            status = response.status
            return response
        except ApiError as err:
            status = err.status
            return _error_response(err)
        except web.HTTPException as exc:
            status = exc.status
            kind = "invalid_request_error" if exc.status < 500 else "server_error"
            return _error_response(ApiError(exc.status, exc.reason, kind=kind))
        except Exception as exc:  # a bug must not leave as a traceback page
            log_event(log, "api_error", logging.ERROR, error=repr(exc))
            log.exception("api_error")
            return _error_response(ApiError(500, "internal error", kind="server_error"))
        finally:
            if metrics is not None:
                metrics.observe_http(route, status, time.perf_counter() - t0)

    app = web.Application(middlewares=[guard], client_max_size=config.max_body_bytes)
    app.router.add_get("/v1/models", api.list_models)
    app.router.add_get("/v1/models/{model}", api.get_model)
    app.router.add_post("/v1/chat/completions", api.chat)
    app.router.add_post("/v1/completions", api.completions)
    app.router.add_get("/health", _ok)
    if metrics is not None:

        async def scrape(request: web.Request) -> web.Response:
            return await metrics_handler(metrics, request)

        app.router.add_get("/metrics", scrape)
    return app


async def _ok(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


class ApiServer:
    """The API listening on ``config.host:config.port``."""

    def __init__(
        self,
        backend: Backend,
        config: ApiConfig,
        metrics: NodeMetrics | None = None,
        key: str | None = None,
    ) -> None:
        self.key = config.key() if key is None else key  # a caller's key beats the config's
        config.check(self.key)
        self.backend, self.config, self.metrics = backend, config, metrics
        self._runner: web.AppRunner | None = None
        self.address = ""

    async def start(self) -> str:
        """Listen; returns ``host:port``."""
        app = build_app(self.backend, self.config, self.metrics, self.key)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, max(self.config.port, 0))
        await site.start()
        self.address = f"{self.config.host}:{bound_port(site)}"
        log_event(log, "api_listening", address=self.address, key=bool(self.key))
        return self.address

    async def stop(self) -> None:
        """Stop listening and close the backend's channels."""
        if self._runner is not None:
            with contextlib.suppress(Exception):
                await self._runner.cleanup()
            self._runner = None
        await self.backend.close()
