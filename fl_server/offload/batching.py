"""Micro-batching of the cloud offload service (see :mod:`fl_server.offload.service`; its metrics:
:mod:`fl_server.offload.metrics`).

A :class:`MicroBatcher` owns an asyncio queue and one worker task. The worker takes the first queued request, gathers
more until ``max_batch`` images or ``max_wait_s`` after that first request arrived, runs the model once in its own
thread (the event loop keeps accepting and checking requests meanwhile), and hands each request its slice of the
labels, with the version of the model that made them (one call, one model: see :mod:`fl_server.offload.handoff`).
With batching off it runs each request alone. Queued images are bounded (``max_pending_images``): past it a request
is refused with 503 at once rather than queued without limit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import torch

log = logging.getLogger("meanet.cloud")


class ServiceError(Exception):
    """A request the service refuses: an HTTP status and a message saying what was expected, found, and the fix.

    ``kind`` names the error in the metrics where the status alone does not (``overloaded`` and ``unavailable`` are
    both 503); None: the status's usual kind (:data:`fl_server.offload.metrics.ERROR_KINDS`).
    """

    def __init__(
        self, status: int, detail: str, headers: dict[str, str] | None = None, kind: str | None = None
    ) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers, self.kind = status, detail, headers or {}, kind


# ------------------------------------------------------------------------------------------------ micro-batching
class Answer(NamedTuple):
    """A request's share of one model call."""

    labels: torch.Tensor  # (n,) int64
    batch_images: int  # images in the model call it rode in
    model_version: int | None  # the version of the model that answered it (None: unversioned)


ModelFn = Callable[[torch.Tensor], torch.Tensor | tuple[torch.Tensor, int | None]]
"""uint8 (N, C, H, W) -> labels (N,), or (labels, model version)."""


@dataclass
class _Job:
    images: torch.Tensor  # (n, C, H, W) uint8
    future: asyncio.Future[Answer]
    enqueued: float  # loop time


class MicroBatcher:
    """Gathers queued requests into one model call (``enabled``) or runs each alone; one model call at a time."""

    def __init__(
        self,
        fn: ModelFn,
        *,
        max_batch: int,
        max_wait_s: float,
        enabled: bool = True,
        max_pending_images: int = 8192,
    ) -> None:
        self.fn, self.max_batch, self.max_wait_s, self.enabled = fn, max_batch, max_wait_s, enabled
        self.max_pending_images = max_pending_images
        self.pending_images = 0
        self.calls = 0  # model calls
        self.call_images = 0  # images over all model calls
        self._queue: asyncio.Queue[_Job] | None = None
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="meanet-model")
        self._task = asyncio.create_task(self._run(), name="meanet-micro-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        while self._queue is not None and not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(
                    ServiceError(503, "the service is stopping; retry on another replica", kind="unavailable")
                )
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, images: torch.Tensor) -> Answer:
        """Queue ``images`` (n, C, H, W); returns their labels (n,), the size of the model call they rode in and the
        version of the model that answered."""
        if not self.running or self._queue is None:
            raise ServiceError(
                503, "the service is not running (starting or stopping); retry shortly", kind="unavailable"
            )
        n = int(images.shape[0])
        if self.pending_images + n > self.max_pending_images:
            raise ServiceError(
                503,
                f"overloaded: {self.pending_images} images queued, the limit is {self.max_pending_images}; "
                "retry after a short back-off",
                {"Retry-After": "1"},
                kind="overloaded",
            )
        loop = asyncio.get_running_loop()
        job = _Job(images, loop.create_future(), loop.time())
        self.pending_images += n
        try:
            self._queue.put_nowait(job)
            self._arrived.set()
            return await job.future
        finally:
            self.pending_images -= n

    async def _gather(self, first: _Job) -> tuple[list[_Job], _Job | None]:
        """``first`` plus queued jobs until ``max_batch`` images or ``max_wait_s`` after ``first`` arrived."""
        assert self._queue is not None
        jobs, total, carry = [first], int(first.images.shape[0]), None
        if not self.enabled:
            return jobs, None
        loop = asyncio.get_running_loop()
        deadline = first.enqueued + self.max_wait_s
        while total < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._arrived.clear()  # waiting on an event (not on queue.get) never loses a job to a timeout
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except asyncio.TimeoutError:
                    break
                continue
            if total + job.images.shape[0] > self.max_batch:
                carry = job  # it opens the next batch
                break
            jobs.append(job)
            total += int(job.images.shape[0])
        return jobs, carry

    async def _run(self) -> None:
        assert self._queue is not None and self._executor is not None
        loop = asyncio.get_running_loop()
        carry: _Job | None = None
        while True:
            first = carry if carry is not None else await self._queue.get()
            jobs, carry = await self._gather(first)
            jobs = [j for j in jobs if not j.future.done()]
            if not jobs:
                continue
            batch = jobs[0].images if len(jobs) == 1 else torch.cat([j.images for j in jobs])  # (sum n, C, H, W)
            try:
                out = await loop.run_in_executor(self._executor, self.fn, batch)
            except Exception as e:  # the model failed: every request of the batch learns it, the worker goes on
                log.exception("model call on %d images failed", batch.shape[0])
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(
                            ServiceError(500, f"the model failed on this batch: {e!r}", kind="model_error")
                        )
                continue
            labels, version = out if isinstance(out, tuple) else (out, None)  # (sum n,)
            self.calls += 1
            self.call_images += int(batch.shape[0])
            for j, part in zip(jobs, labels.split([int(j.images.shape[0]) for j in jobs]), strict=True):
                if not j.future.done():
                    j.future.set_result(Answer(part, int(batch.shape[0]), version))
