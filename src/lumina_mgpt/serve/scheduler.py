"""The batching scheduler: requests from the event loop in, one model worker thread, batched engine calls.

Text-to-image requests wait in a bounded queue (`QueueFull` past `max_queue` images). The worker takes
the oldest request and every waiting request with the same batch key (size, sampling settings, SJD
window) up to `max_batch` images, and decodes them with ONE engine call (`Pipeline.generate_codes` on
the concatenated prompts, each image with its own seed). Each image is then decoded to pixels on its
own, so an image depends only on its prompt, seed and settings, never on its batch neighbours.

A request that is cancelled (its client went away, or it timed out) while it waits is removed from the
queue and never decoded. Once its batch runs, the engine cannot drop one row: the batch goes on for the
others and the request's images are thrown away; when every request of a running batch is gone, the
batch stops at the next finished image row. A batch that fails with a LuminaError is retried request by
request, so that one bad request cannot fail its neighbours.

Everything that touches torch runs in the worker thread (`call` runs other model work there too, e.g.
chat): the event loop only waits on asyncio futures, which the worker resolves thread-safely.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import io
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from lumina_mgpt.errors import GenerationError, LuminaError
from lumina_mgpt.generation.engine import GenerationSettings

# Partial images show the rows decoded so far over this neutral gray.
PENDING_GRAY = (128, 128, 128)


class QueueFull(GenerationError):
    """The queue holds `max_queue` images already; the client should retry later (HTTP 429)."""


class SchedulerClosed(GenerationError):
    """The scheduler is shutting down and takes no more work."""


@dataclass(frozen=True)
class ImageRequest:
    """A checked text-to-image request: `n` images of `prompt`, image i with seed `seed + i`.
    `partial_rows` lists the image rows after which a partial image is sent (empty: none)."""

    prompt: str
    n: int
    width: int
    height: int
    settings: GenerationSettings
    seed: int
    sjd_window: int | None = None
    partial_rows: tuple[int, ...] = ()

    @property
    def batch_key(self) -> tuple:
        """Requests with equal keys are decoded together."""
        return self.width, self.height, self.settings, self.sjd_window


@dataclass(frozen=True)
class PartialImage:
    """The rows of image `image_index` decoded so far (`rows` of them), as a full-size PNG."""

    image_index: int
    rows: int
    png: bytes


@dataclass(frozen=True)
class BatchInfo:
    """What one engine call decoded: the requests' prompts and image counts, in batch order."""

    requests: tuple[ImageRequest, ...]

    @property
    def images(self) -> int:
        return sum(request.n for request in self.requests)


@dataclass(eq=False)
class Ticket:
    """A submitted request. `result` resolves to a list of PNG bytes, one per image, or to an exception;
    `on_partial`, called on the event loop, receives each PartialImage of a streamed request."""

    request: ImageRequest
    loop: asyncio.AbstractEventLoop
    result: asyncio.Future
    on_partial: Callable[[PartialImage], None] | None = None
    gone: bool = False
    arrived: float = field(default_factory=time.monotonic)
    rows: list[np.ndarray] = field(default_factory=list)

    def resolve(self, value: Any) -> None:
        """Set the result (or the exception) from any thread, unless the ticket was resolved already."""
        self.loop.call_soon_threadsafe(_settle, self.result, value)

    def send_partial(self, partial: PartialImage) -> None:
        if self.on_partial is not None and not self.gone:
            self.loop.call_soon_threadsafe(self.on_partial, partial)


class BatchScheduler:
    """Batches `ImageRequest`s for one pipeline on one worker thread (see the module docstring).

    `max_batch`: images per engine call; `max_queue`: images waiting at most; `batch_wait_s`: how long a
    request that finds the worker idle waits for companions. `on_batch(BatchInfo)` is called on the worker
    thread right before each engine call: a public hook to observe batching. `stats` counts the batches
    decoded, their images, the requests dropped (cancelled) and the batches abandoned (every request gone)."""

    def __init__(
        self,
        pipe,
        max_batch: int = 16,
        max_queue: int = 256,
        batch_wait_s: float = 0.02,
        on_batch: Callable[[BatchInfo], None] | None = None,
    ):
        if max_batch < 1 or max_queue < max_batch:
            raise GenerationError(
                f"need max_batch >= 1 and max_queue >= max_batch, got max_batch {max_batch}, max_queue {max_queue}"
            )
        self.pipe = pipe
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.batch_wait_s = batch_wait_s
        self.on_batch = on_batch
        self.stats = {"batches": 0, "images": 0, "dropped": 0, "abandoned": 0}
        self._pending: deque[Ticket] = deque()
        self._calls: deque[tuple[Callable[[], Any], asyncio.AbstractEventLoop, asyncio.Future]] = deque()
        self._queued_images = 0
        self._paused = False
        self._closed = False
        self._condition = threading.Condition()
        self._worker = threading.Thread(target=self._work, name="lumina-model-worker", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ event-loop side
    @property
    def queued_images(self) -> int:
        """Images waiting for a batch (not those being decoded)."""
        return self._queued_images

    def submit(self, request: ImageRequest, on_partial: Callable[[PartialImage], None] | None = None) -> Ticket:
        """Queue a request (call from the event loop); QueueFull when it does not fit."""
        if request.n > self.max_batch:
            raise GenerationError(f"n must be at most {self.max_batch} (this server's batch size), got {request.n}")
        loop = asyncio.get_running_loop()
        ticket = Ticket(request, loop, loop.create_future(), on_partial)
        with self._condition:
            if self._closed:
                raise SchedulerClosed("the server is shutting down; retry on another instance")
            if self._queued_images + request.n > self.max_queue:
                raise QueueFull(
                    f"the queue is full ({self._queued_images} images waiting, at most {self.max_queue}); "
                    f"retry in a moment"
                )
            self._pending.append(ticket)
            self._queued_images += request.n
            self._condition.notify_all()
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        """Drop a request: removed from the queue if it waits; if it is being decoded, its images are thrown
        away (and its batch stops early when no request of it is left)."""
        with self._condition:
            if ticket.gone:
                return
            ticket.gone = True
            self.stats["dropped"] += 1
            if ticket in self._pending:
                self._pending.remove(ticket)
                self._queued_images -= ticket.request.n
        ticket.resolve(asyncio.CancelledError())

    def call(self, function: Callable[[], Any]) -> asyncio.Future:
        """Run `function()` on the model worker thread, between batches; a future of its result."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._condition:
            if self._closed:
                raise SchedulerClosed("the server is shutting down; retry on another instance")
            self._calls.append((function, loop, future))
            self._condition.notify_all()
        return future

    def pause(self) -> None:
        """Start no new batch until `resume` (the running one finishes); requests keep queueing."""
        with self._condition:
            self._paused = True

    def resume(self) -> None:
        with self._condition:
            self._paused = False
            self._condition.notify_all()

    def close(self) -> None:
        """Refuse new work, fail what waits, and let the worker finish its current batch and stop."""
        with self._condition:
            self._closed = True
            waiting = [(ticket.loop, ticket.result) for ticket in self._pending]
            waiting += [(loop, future) for _, loop, future in self._calls]
            self._pending.clear()
            self._calls.clear()
            self._queued_images = 0
            self._condition.notify_all()
        for loop, future in waiting:
            loop.call_soon_threadsafe(_settle, future, SchedulerClosed("the server shut down before this request ran"))
        self._worker.join(timeout=60)

    # ------------------------------------------------------------------ worker side
    def _work(self) -> None:
        while True:
            job = self._next_job()
            if job is None:
                return
            if isinstance(job, list):
                self._run_batch(job)
            else:
                function, loop, future = job
                try:
                    value: Any = function()
                except Exception as error:  # noqa: BLE001 - the worker lives on; the request answers with it
                    value = error
                loop.call_soon_threadsafe(_settle, future, value)

    def _next_job(self) -> list[Ticket] | tuple | None:
        """The next call or batch, waiting for one; None once closed."""
        with self._condition:
            while True:
                if self._closed:
                    return None
                if self._calls:
                    return self._calls.popleft()
                if self._pending and not self._paused:
                    oldest = self._pending[0]
                    same = sum(t.request.n for t in self._pending if t.request.batch_key == oldest.request.batch_key)
                    waited = time.monotonic() - oldest.arrived
                    if same >= self.max_batch or waited >= self.batch_wait_s:
                        return self._take_batch()
                    self._condition.wait(self.batch_wait_s - waited)
                else:
                    self._condition.wait()

    def _take_batch(self) -> list[Ticket]:
        """The oldest request and the waiting ones that share its key, up to max_batch images (lock held)."""
        key = self._pending[0].request.batch_key
        batch, rest, images = [], deque(), 0
        for ticket in self._pending:
            if ticket.request.batch_key == key and images + ticket.request.n <= self.max_batch:
                batch.append(ticket)
                images += ticket.request.n
            else:
                rest.append(ticket)
        self._pending = rest
        self._queued_images -= images
        return batch

    def _run_batch(self, batch: list[Ticket]) -> None:
        try:
            grids = self._decode(batch)
        except _BatchAbandoned:
            self.stats["abandoned"] += 1
            return
        except LuminaError as error:
            if len(batch) == 1:
                batch[0].resolve(error)
            else:  # find the request at fault: each alone
                for ticket in batch:
                    self._run_batch([ticket])
            return
        except Exception as error:  # noqa: BLE001 - the worker lives on; every request answers with it (500)
            for ticket in batch:
                ticket.resolve(error)
            return
        finally:
            release_free_memory()
        start = 0
        for ticket in batch:
            own = grids[start : start + ticket.request.n]
            start += ticket.request.n
            if not ticket.gone:
                ticket.resolve([png_bytes(self._pixels(grid)) for grid in own])

    def _decode(self, batch: list[Ticket]) -> list[np.ndarray]:
        """One engine call for the whole batch; partial images sent as rows finish."""
        first = batch[0].request
        prompts = [t.request.prompt for t in batch for _ in range(t.request.n)]
        seeds = [t.request.seed + i for t in batch for i in range(t.request.n)]
        spans, start = [], 0
        for ticket in batch:
            spans.append(slice(start, start + ticket.request.n))
            start += ticket.request.n
            ticket.rows = []

        def on_row(row: int, codes: np.ndarray) -> None:
            if all(ticket.gone for ticket in batch):
                raise _BatchAbandoned
            for ticket, span in zip(batch, spans):
                if ticket.on_partial is None or ticket.gone:
                    continue
                ticket.rows.append(codes[span])
                if row in ticket.request.partial_rows:
                    self._send_partials(ticket, first.width, first.height)

        if self.on_batch is not None:
            self.on_batch(BatchInfo(tuple(t.request for t in batch)))
        grids = self.pipe.generate_codes(
            prompts,
            first.width,
            first.height,
            first.settings,
            seeds,
            on_row=on_row,
            progress=False,
            sjd_window=first.sjd_window,
        )
        self.stats["batches"] += 1
        self.stats["images"] += len(prompts)
        return grids

    def _send_partials(self, ticket: Ticket, width: int, height: int) -> None:
        """A full-size picture of each image's rows so far, over gray."""
        rows = np.stack(ticket.rows, axis=1)  # (n, rows so far, w)
        for index, grid in enumerate(rows):
            canvas = Image.new("RGB", (width, height), PENDING_GRAY)
            canvas.paste(self._pixels(grid), (0, 0))
            ticket.send_partial(PartialImage(index, len(ticket.rows), png_bytes(canvas)))

    def _pixels(self, grid: np.ndarray) -> Image.Image:
        import torch

        return self.pipe.image_tokenizer.decode_to_pil(torch.as_tensor(grid)[None])[0]


class _BatchAbandoned(Exception):
    """Raised inside the engine's row callback to stop a batch whose every request is gone."""


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library has none (musl, macOS, Windows)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_free_memory() -> None:
    """Hand the memory that freed tensors left in the C heap back to the system. Batches of changing sizes
    leave differently sized holes that glibc keeps: under benchmarks/bench_serve.py the server's RSS grew 34%
    from its 20th to its 200th request without this, 1% with it."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _settle(future: asyncio.Future, value: Any) -> None:
    if future.done():
        return
    if isinstance(value, BaseException):
        future.set_exception(value)
    else:
        future.set_result(value)


def png_bytes(image: Image.Image) -> bytes:
    """An image as PNG file bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
