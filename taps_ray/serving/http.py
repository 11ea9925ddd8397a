"""HTTP routes of the OpenAI-compatible API (Starlette), over a `CompletionService`.

A request is started in the event loop (so a full batch queue is a 503 with Retry-After before
any byte is sent); its events are read in a thread pool (one thread per request the replica
takes) so the event loop keeps accepting requests, and reach the response through an asyncio
queue. A client that goes away cancels its decoding at once (a batched sequence leaves the batch
at the next step). Every refusal is an OpenAI error body; only a failure inside the replica
is a 500.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from taps_ray.serving.events import Decoding, Event
from taps_ray.serving.metrics import Metrics
from taps_ray.serving.protocol import (
    DONE,
    ApiError,
    GenerationRequest,
    ResponseHead,
    parse_chat,
    parse_completion,
    parse_json,
    sse,
)
from taps_ray.serving.service import CompletionService, Job

logger = logging.getLogger("ray.serve")  # Serve's replica logs capture this logger
_END = object()  # end of a decoding thread's events
_INTERNAL = "the server failed while generating; retry, and report it if it persists"


def build_http_app(
    service: CompletionService, pool: Executor, metrics: Metrics, api_key: str | None
) -> Starlette:
    """The ASGI app of one replica. `api_key` None: no authentication."""
    api = _Api(service, pool, metrics, api_key)
    routes = [
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/v1/models", api.models, methods=["GET"]),
        Route("/v1/chat/completions", api.chat, methods=["POST"]),
        Route("/v1/completions", api.completions, methods=["POST"]),
    ]
    handlers = {HTTPException: _http_error, Exception: _server_error}
    return Starlette(routes=routes, exception_handlers=handlers)


def error_response(err: ApiError, retry_after_s: float = 0.0) -> JSONResponse:
    """The error body; a 401 asks for a bearer token, a 503 says when to retry (as Serve's)."""
    headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else {}
    if err.status == 503:
        headers["Retry-After"] = str(math.ceil(retry_after_s))
    return JSONResponse(err.body(), status_code=err.status, headers=headers or None)


def keys_match(given: str, key: str) -> bool:
    """Constant time in the keys' contents and lengths: both are hashed to 32 bytes first."""
    digest = [hashlib.sha256(k.encode()).digest() for k in (given, key)]
    return hmac.compare_digest(*digest)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    message = f"{request.method} {request.url.path}: {exc.detail}"
    return error_response(ApiError(exc.status_code, message, None, code))


async def _server_error(request: Request, exc: Exception) -> Response:
    return error_response(ApiError(500, _INTERNAL, None, "internal_error"))


class _Api:
    def __init__(
        self, service: CompletionService, pool: Executor, metrics: Metrics, api_key: str | None
    ):
        self.service, self.pool, self.metrics, self.api_key = service, pool, metrics, api_key

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def models(self, request: Request) -> Response:
        try:
            self._authorize(request)
        except ApiError as err:
            return error_response(err)
        return JSONResponse({"object": "list", "data": [self.service.describe()]})

    async def chat(self, request: Request) -> Response:
        return await self._generate(request, "chat", parse_chat)

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, "completions", parse_completion)

    async def _generate(
        self, request: Request, endpoint: str, parse: Callable[[dict], GenerationRequest]
    ) -> Response:
        start = time.perf_counter()
        try:
            self._authorize(request)
            job = self.service.prepare(parse(parse_json(await request.body())))
            decoding = self.service.run(job, self.metrics.live)
        except ApiError as err:
            self.metrics.record(endpoint, err.status, time.perf_counter() - start, None)
            return error_response(err, self.service.config.retry_after_s)
        head = ResponseHead.new(self.service.model_name, job.request.kind)
        if job.request.stream:
            events = self._sse(job, decoding, head, endpoint, start)
            headers = {"Cache-Control": "no-cache"}
            return StreamingResponse(events, media_type="text/event-stream", headers=headers)
        return await self._whole(decoding, head, endpoint, start)

    def _authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "missing API key: send the header 'Authorization: Bearer <key>'",
                           None, "missing_api_key")
        if not keys_match(token.strip(), self.api_key):
            raise ApiError(401, "invalid API key", None, "invalid_api_key")

    async def _whole(
        self, decoding: Decoding, head: ResponseHead, endpoint: str, start: float
    ) -> Response:
        texts, last = [], None
        try:
            async for event in self._events(decoding):
                texts.append(event.text)
                last = event
        except Exception:
            return self._failed(endpoint, start, stream=False)
        self._done(endpoint, start, last)
        return JSONResponse(head.body("".join(texts), last.finish_reason, last.stats.usage()))

    async def _sse(
        self, job: Job, decoding: Decoding, head: ResponseHead, endpoint: str, start: float
    ) -> AsyncIterator[bytes]:
        if head.kind == "chat":
            yield sse(head.chunk(None, first=True))  # the role comes first, as OpenAI sends it
        last = None
        try:
            async for event in self._events(decoding):
                if event.text or event.finish_reason:
                    yield sse(head.chunk(event.text, event.finish_reason))
                last = event
        except Exception:
            yield sse(self._failed(endpoint, start, stream=True))
            yield DONE
            return
        if job.request.include_usage:
            yield sse(head.usage_chunk(last.stats.usage()))
        yield DONE
        self._done(endpoint, start, last)

    def _done(self, endpoint: str, start: float, last: Event) -> None:
        self.service.note_result(True)
        self.metrics.record(endpoint, 200, time.perf_counter() - start, last.stats)

    def _failed(self, endpoint: str, start: float, stream: bool) -> Any:
        logger.exception("generation failed")  # an internal error: the traceback helps here
        self.service.note_result(False)
        self.metrics.record(endpoint, 500, time.perf_counter() - start, None)
        err = ApiError(500, _INTERNAL, None, "internal_error")
        return err.body() if stream else error_response(err)

    async def _events(self, decoding: Decoding) -> AsyncIterator[Event]:
        """The decoding's events, read in the pool; cancels the decoding when abandoned."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def put(item: object) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop closed (replica shutting down)
                decoding.cancel()

        def produce() -> None:
            events = iter(decoding)
            try:
                for event in events:
                    put(event)
            except Exception as err:
                put(err)
            finally:
                events.close()  # ends the job however the loop ended (frees its batch slot)
                put(_END)

        self.pool.submit(produce)
        try:
            while (item := await queue.get()) is not _END:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            decoding.cancel()
