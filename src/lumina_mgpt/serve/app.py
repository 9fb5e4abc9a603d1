"""The OpenAI-compatible HTTP API (FastAPI) over one Pipeline and its batching scheduler.

    POST /v1/images/generations   text to image (OpenAI images API; `stream: true` sends partial images;
                                  `best_of: N` with `verifier: "self"` or "self-caption" keeps the model's
                                  favourite of N)
    POST /v1/images/edits         image editing, where the model has it (501 otherwise)
    POST /v1/chat/completions     text and images in, text out, where the model chats (501 otherwise)
    GET  /v1/models, GET /health
    /ui                           the Gradio web UI (serve/ui.py)

Errors use OpenAI's shape, {"error": {"message", "type", "param", "code"}}: 400 for bad input, 404 for an
unknown model or route, 413 for a body over the limit, 429 when the queue is full, 501 for a task the model
was not trained for, 504 past the request timeout. Requests whose client disconnects are cancelled
(see serve/scheduler.py for what that means mid-batch).
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from lumina_mgpt.errors import LuminaError
from lumina_mgpt.generation.checks import check_integer
from lumina_mgpt.model_folder import CHAT, EDIT, require_task
from lumina_mgpt.serve.parsing import (
    CHAT_FIELDS,
    IMAGE_FIELDS,
    ApiError,
    best_of_choice,
    chat_turns,
    check_model,
    decode_image,
    field,
    image_request,
    json_object,
    parse_seed,
    parse_size,
)
from lumina_mgpt.serve.scheduler import (
    BatchScheduler,
    ImageRequest,
    PartialImage,
    QueueFull,
    SchedulerClosed,
    png_bytes,
)

# How often a waiting request checks whether its client is still there.
DISCONNECT_POLL_S = 0.1
# Images uploaded for editing or chat: at most this many pixels each.
MAX_UPLOAD_PIXELS = 4096 * 4096


class ClientGone(Exception):
    """The client disconnected while its request waited."""


def create_app(
    pipe,
    model_id: str,
    scheduler: BatchScheduler,
    timeout_s: float = 300.0,
    max_body_bytes: int = 16 * 2**20,
    ui: bool = True,
) -> FastAPI:
    """The API (and, with `ui`, the web UI at /ui) for `pipe`, served as `model_id`. The app owns `scheduler`:
    it closes it on shutdown."""

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        await asyncio.to_thread(scheduler.close)

    app = FastAPI(title="lumina-mgpt", summary=f"OpenAI-compatible image API for {model_id}", lifespan=lifespan)
    app.add_middleware(BodyLimit, limit=max_body_bytes)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, error: HTTPException) -> JSONResponse:
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        return JSONResponse(
            ApiError(error.status_code, str(error.detail), kind=kind).body(), status_code=error.status_code
        )

    async def wait(request: Request, future: asyncio.Future, on_gone) -> Any:
        """The future's result; 504 past the timeout, ClientGone when the client left (both call on_gone)."""
        deadline = time.monotonic() + timeout_s
        while not future.done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                on_gone()
                raise ApiError(
                    504,
                    f"the request did not finish within the server's timeout of {timeout_s:g} s; "
                    f"retry, or ask for fewer or smaller images",
                    kind="timeout",
                    code="timeout",
                )
            await asyncio.wait({future}, timeout=min(DISCONNECT_POLL_S, remaining))
            if not future.done() and await request.is_disconnected():
                on_gone()
                raise ClientGone
        return request_outcome(future)

    def submit(image: ImageRequest, on_partial=None):
        try:
            return scheduler.submit(image, on_partial)
        except LuminaError as error:  # a full queue (429), a server shutting down (503)
            raise as_api_error(error) from None

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": model_id, "queued_images": scheduler.queued_images, **scheduler.stats}

    @app.get("/v1/models")
    async def models() -> dict:
        width, height = pipe.defaults.size
        return {
            "object": "list",
            "data": [
                {
                    "id": model_id,
                    "object": "model",
                    "created": 0,
                    "owned_by": "lumina-mgpt",
                    "tasks": list(pipe.tasks),
                    "default_size": f"{width}x{height}",
                    "layout": pipe.layout.name,
                }
            ],
        }

    @app.post("/v1/images/generations")
    async def generations(request: Request) -> Response:
        body = json_object(await request.body(), IMAGE_FIELDS)
        check_model(body, model_id)
        image = image_request(body, pipe, scheduler.max_batch)
        choice = best_of_choice(body, pipe, scheduler.max_batch)
        if choice is not None:
            return await chosen_images(request, image, *choice)
        if body.get("stream", False):
            return stream_images(image)
        ticket = submit(image)
        try:
            pngs = await wait(request, ticket.result, lambda: scheduler.cancel(ticket))
        except ClientGone:
            return Response(status_code=499)
        return JSONResponse(images_body(image, pngs, pipe.read(image.prompt)))

    async def chosen_images(request: Request, image: ImageRequest, best_of: int, verifier: str) -> Response:
        """Best-of-N on the worker thread: each image's candidates in one engine call, the verifier's choice kept;
        each item also carries the "best_of" record of its metadata (every candidate's seed, scores, rank)."""
        settings = image.settings

        def draw():
            images = pipe.generate(
                image.prompt, width=image.width, height=image.height, num_images=image.n, seed=image.seed,
                cfg=settings.cfg, top_k=settings.image.top_k, top_p=settings.image.top_p,
                temperature=settings.image.temperature, cfg_schedule=settings.cfg_schedule,
                sjd_window=image.sjd_window, batch_size=scheduler.max_batch, progress=False, best_of=best_of,
                verifier=verifier,
            )  # fmt: skip
            return [(png_bytes(picture), json.loads(picture.info["parameters"])["best_of"]) for picture in images]

        try:
            chosen = await wait(request, scheduler.call(draw), lambda: None)
        except ClientGone:
            return Response(status_code=499)
        body = images_body(image, [png for png, _ in chosen], pipe.read(image.prompt))
        for item, (_, record) in zip(body["data"], chosen):
            item["best_of"] = record
        return JSONResponse(body)

    def stream_images(image: ImageRequest) -> StreamingResponse:
        partials: asyncio.Queue[PartialImage] = asyncio.Queue()
        ticket = submit(image, partials.put_nowait)  # before the response starts: a full queue is still a 429
        size = f"{image.width}x{image.height}"
        common = {"size": size, "output_format": "png", "background": "opaque", "quality": "auto"}

        counts = [0] * image.n

        def partial_event(partial: PartialImage) -> str:
            counts[partial.image_index] += 1
            return _sse(
                {
                    "type": "image_generation.partial_image",
                    "b64_json": _b64(partial.png),
                    "partial_image_index": counts[partial.image_index] - 1,
                    "image_index": partial.image_index,
                    "rows": partial.rows,
                    "created_at": int(time.time()),
                    **common,
                }
            )

        async def events() -> AsyncIterator[str]:
            deadline = time.monotonic() + timeout_s
            try:
                while True:
                    getter = asyncio.ensure_future(partials.get())
                    await asyncio.wait(
                        {getter, ticket.result},
                        timeout=max(deadline - time.monotonic(), 0),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    if getter.done():
                        yield partial_event(getter.result())
                        continue
                    getter.cancel()
                    if not ticket.result.done():
                        scheduler.cancel(ticket)
                        error = ApiError(
                            504,
                            f"the request did not finish within the server's timeout of {timeout_s:g} s",
                            kind="timeout",
                            code="timeout",
                        )
                        yield _sse({"type": "error", **error.body()})
                        return
                    while not partials.empty():  # sent before the result was set
                        yield partial_event(partials.get_nowait())
                    try:
                        pngs = request_outcome(ticket.result)
                    except ApiError as error:
                        yield _sse({"type": "error", **error.body()})
                        return
                    for index, png in enumerate(pngs):
                        yield _sse(
                            {
                                "type": "image_generation.completed",
                                "b64_json": _b64(png),
                                "image_index": index,
                                "seed": image.seed + index,
                                "created_at": int(time.time()),
                                **common,
                            }
                        )
                    yield "data: [DONE]\n\n"
                    return
            finally:
                if not ticket.result.done():
                    scheduler.cancel(ticket)

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.post("/v1/images/edits")
    async def edits(request: Request) -> Response:
        require_model_task(pipe.tasks, EDIT)
        form = await request.form()
        upload, prompt = form.get("image"), form.get("prompt")
        if upload is None or isinstance(upload, str):
            raise ApiError(
                400, "image must be an uploaded file (multipart/form-data)", param="image", code="invalid_value"
            )
        if not isinstance(prompt, str) or not prompt.strip():
            raise ApiError(400, f"prompt must be non-empty text, got {prompt!r}", param="prompt", code="invalid_value")
        picture = decode_image(await upload.read(), "image", MAX_UPLOAD_PIXELS)
        seed = form.get("seed")
        seed = parse_seed(int(seed) if isinstance(seed, str) and seed.isdigit() else seed)
        size = form.get("size")
        # Without a size the pipeline picks the family's answer size (v1: the input's resolution bucket).
        sizing = {} if size in (None, "auto") else dict(zip(("width", "height"), parse_size(size, pipe)))
        future = scheduler.call(lambda: png_bytes(pipe.edit(picture, prompt, seed=seed, **sizing)))
        try:
            png = await wait(request, future, lambda: None)
        except ClientGone:
            return Response(status_code=499)
        return JSONResponse({"created": int(time.time()), "data": [{"b64_json": _b64(png), "seed": seed}]})

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        require_model_task(pipe.tasks, CHAT)
        body = json_object(await request.body(), CHAT_FIELDS)
        check_model(body, model_id)
        if body.get("stream", False) is not False or body.get("n", 1) != 1:
            raise ApiError(
                400,
                "chat answers one completion without streaming here: give n 1 and stream false",
                param="stream" if body.get("stream") else "n",
                code="invalid_value",
            )
        turns, images = chat_turns(body.get("messages"), MAX_UPLOAD_PIXELS)
        limit = body.get("max_completion_tokens", body.get("max_tokens", 512))
        with field("max_tokens"):
            max_tokens = check_integer("max_tokens", limit, 1, "tokens the answer may hold", 8192)
        seed = parse_seed(body.get("seed"))
        options = {"temperature": body.get("temperature"), "top_k": body.get("top_k")}

        def answer():
            reply = pipe.chat(turns, images, seed=seed, max_new_tokens=max_tokens, **options)
            return reply.text, [png_bytes(image) for image in reply.images]

        try:
            text, pngs = await wait(request, scheduler.call(answer), lambda: None)
        except ClientGone:
            return Response(status_code=499)
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if pngs:
            message["images"] = [{"b64_json": _b64(png)} for png in pngs]
        return JSONResponse(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model_id,
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            }
        )

    if ui:
        import gradio

        from lumina_mgpt.serve.ui import UI_CSS, build_ui

        app = gradio.mount_gradio_app(app, build_ui(pipe, scheduler, timeout_s), path="/ui", css=UI_CSS)
    return app


def images_body(image: ImageRequest, pngs: list[bytes], prompt_read: str) -> dict:
    """The OpenAI ImagesResponse of a finished request (each item also carries its seed); `prompt_read`, the
    prompt as the model read it (`Pipeline.read`), is each item's `revised_prompt` where it differs."""
    revised = {} if prompt_read == image.prompt else {"revised_prompt": prompt_read}
    return {
        "created": int(time.time()),
        "size": f"{image.width}x{image.height}",
        "output_format": "png",
        "data": [{"b64_json": _b64(png), "seed": image.seed + index, **revised} for index, png in enumerate(pngs)],
    }


def require_model_task(tasks, task: str) -> None:
    """A 501 with the project's own refusal (`require_task`) unless the model was trained for `task`."""
    try:
        require_task(tasks, task)
    except LuminaError as error:
        raise ApiError(501, str(error), kind="not_implemented", code="task_not_supported") from None


def as_api_error(error: BaseException) -> ApiError:
    """What the client is told about a failed request."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, QueueFull):
        return ApiError(429, str(error), kind="rate_limit_error", code="queue_full")
    if isinstance(error, SchedulerClosed):
        return ApiError(503, str(error), kind="server_error", code="shutting_down")
    if isinstance(error, LuminaError):
        return ApiError(400, str(error), code="invalid_value")
    if isinstance(error, asyncio.CancelledError):
        return ApiError(499, "the request was cancelled", code="cancelled")
    # The model failed: the client gets the reason, the server stays up.
    return ApiError(
        500,
        f"the model failed on this request: {type(error).__name__}: {error}",
        kind="server_error",
        code="model_error",
    )


def request_outcome(future: asyncio.Future) -> Any:
    """A finished future's value; its failure raised as an ApiError."""
    try:
        return future.result()
    except (Exception, asyncio.CancelledError) as error:  # noqa: BLE001 - every failure becomes an answer
        raise as_api_error(error) from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _sse(event: dict) -> str:
    return f"data: {json.dumps(event)}\n\n"


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is answered 413, whether announced by its
    Content-Length or found while it streams in."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send, int(declared))
            return
        received = 0
        started = False

        async def counting_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise _TooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(send, received)

    async def _refuse(self, send, size: int) -> None:
        error = ApiError(
            413,
            f"the request body is {size} bytes or more; at most {self.limit} bytes are accepted",
            code="payload_too_large",
        )
        body = json.dumps(error.body()).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one); OSError when the address is taken or foreign."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=2048)


class HttpServer:
    """uvicorn on a bound socket (`bind_socket`, or one bound here on host:port): `run()` in the foreground,
    or `start()` / `stop()` on a background thread (tests, benchmarks). `port` is the real port."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, sock: socket.socket | None = None):
        import uvicorn

        self.socket = sock if sock is not None else bind_socket(host, port)
        self.host, self.port = self.socket.getsockname()[:2]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def run(self) -> None:
        self.server.run(sockets=[self.socket])

    def start(self) -> HttpServer:
        self._thread = threading.Thread(target=self.run, name="lumina-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
