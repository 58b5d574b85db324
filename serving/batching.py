"""Micro-batching with a bounded queue: inference off the event loop, overload answered early.

Requests put their audio on a bounded queue and await a future. One worker takes the first
waiting request, gathers more for up to `wait_ms` (or until `max_batch` are in hand), and runs
the pipeline on all of them in one thread, so concurrent clips share model calls. When the queue
is full, `submit` raises `OverloadedError` at once: a 503 with Retry-After now is better than
latency that grows without bound.

With a `prepare` stage (the pipeline's front half: decode, preprocess, VAD), clips are prepared
on a second thread as they arrive, all those waiting in one call (the VAD runs them as one
batch), so the VAD of the next batch runs while the model recognizes this one, instead of before
it on the same thread; the queue bound counts clips waiting for or in that stage too.
"""

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from asr.errors import AudioError
from asr.pipeline import Transcript
from serving.http_errors import OverloadedError

logger = logging.getLogger(__name__)

TranscribeMany = Callable[[Sequence[Any]], list[Transcript | AudioError]]
"""Recognizes a batch: of audio bytes, or of what `Prepare` made of them."""
Prepare = Callable[[Sequence[bytes]], list[Any]]
"""The front half for several clips at once (what it returns goes to `TranscribeMany`)."""


@dataclass
class _Job:
    audio: Any
    future: "asyncio.Future[Transcript]"
    queued_at: float


class MicroBatcher:
    """Serializes recognition on one worker thread and batches concurrent requests."""

    def __init__(
        self,
        transcribe_many: TranscribeMany,
        max_batch: int,
        wait_ms: float,
        max_queue: int,
        prepare: Prepare | None = None,
    ) -> None:
        self._transcribe_many, self._prepare = transcribe_many, prepare
        self.max_batch, self.wait_s, self.max_queue = max_batch, wait_ms / 1000, max_queue
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=max_queue)
        # One thread: the model already uses every core through torch's intra-op threads.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        # One more for the front half: VAD beside the model, never several VADs against it.
        self._front = ThreadPoolExecutor(max_workers=1, thread_name_prefix="front")
        self._incoming: asyncio.Queue[_Job] = asyncio.Queue()  # bounded by `depth` in `submit`
        self._preparing = 0
        self._worker: asyncio.Task[None] | None = None
        self._front_worker: asyncio.Task[None] | None = None
        self._running = False

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._worker = loop.create_task(self._run(), name="micro-batcher")
        if self._prepare is not None:
            self._front_worker = loop.create_task(self._run_front(), name="front")

    async def stop(self) -> None:
        workers = [w for w in (self._front_worker, self._worker) if w is not None]
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        self._executor.shutdown(wait=True)
        self._front.shutdown(wait=True)

    def depth(self) -> int:
        """Clips waiting for the recognizer, or being prepared for it (not the batch being recognized)."""
        return self._queue.qsize() + self._incoming.qsize() + self._preparing

    def busy(self) -> bool:
        """A batch is being recognized or clips are waiting."""
        return self._running or self.depth() > 0

    async def submit(self, audio: bytes) -> Transcript:
        """Recognize one clip; raises the clip's `AudioError`, or `OverloadedError` when full."""
        if self.depth() >= self.max_queue:
            raise self._full()
        job = _Job(audio, asyncio.get_running_loop().create_future(), time.perf_counter())
        (self._queue if self._prepare is None else self._incoming).put_nowait(job)
        return await job.future

    async def _run_front(self) -> None:
        """Prepare every clip waiting, in one call, then hand each to the model's queue."""
        assert self._prepare is not None
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self._incoming.get()]
            while not self._incoming.empty():
                jobs.append(self._incoming.get_nowait())
            self._preparing = len(jobs)
            try:
                prepared = await loop.run_in_executor(self._front, self._prepare, [j.audio for j in jobs])
            except Exception as e:
                logger.exception("preparing a batch of %d failed", len(jobs))
                prepared = [e] * len(jobs)
            finally:
                self._preparing = 0
            for job, item in zip(jobs, prepared, strict=True):
                if isinstance(item, Exception) and not isinstance(item, AudioError):
                    _settle(job, item)
                    continue
                job.audio = item  # an AudioError goes on too: the batch reports it in its place
                self._queue.put_nowait(job)  # never full: `submit` bounds every stage together

    def _full(self) -> OverloadedError:
        return OverloadedError(
            f"recognition queue is full ({self.max_queue} waiting); retry shortly", retry_after_s=1
        )

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self._queue.get()]
            deadline = loop.time() + self.wait_s
            while len(jobs) < self.max_batch:
                if not self._queue.empty():  # take what is already waiting, deadline or not
                    jobs.append(self._queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    jobs.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            self._running = True
            try:
                results = await loop.run_in_executor(
                    self._executor, self._transcribe_many, [job.audio for job in jobs]
                )
            except Exception as e:
                logger.exception("recognition failed for a batch of %d", len(jobs))
                results = [e] * len(jobs)  # type: ignore[list-item]
            finally:
                self._running = False
            for job, result in zip(jobs, results, strict=True):
                _settle(job, result)


def _settle(job: _Job, result: Any) -> None:
    if job.future.done():  # the client went away
        return
    if isinstance(result, BaseException):
        job.future.set_exception(result)
    else:
        job.future.set_result(result)
