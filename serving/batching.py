"""Micro-batching with a bounded queue: inference off the event loop, overload answered early.

Requests put their audio on a bounded queue and await a future. One worker takes the first
waiting request, gathers more for up to `wait_ms` (or until `max_batch` are in hand), and runs
the pipeline on all of them in one thread, so concurrent clips share model calls. When the queue
is full, `submit` raises `OverloadedError` at once: a 503 with Retry-After now is better than
latency that grows without bound.
"""

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from asr.errors import AudioError
from asr.pipeline import Transcript
from serving.errors import OverloadedError

logger = logging.getLogger(__name__)

TranscribeMany = Callable[[Sequence[bytes]], list[Transcript | AudioError]]


@dataclass
class _Job:
    audio: bytes
    future: "asyncio.Future[Transcript]"
    queued_at: float


class MicroBatcher:
    """Serializes recognition on one worker thread and batches concurrent requests."""

    def __init__(
        self, transcribe_many: TranscribeMany, max_batch: int, wait_ms: float, max_queue: int
    ) -> None:
        self._transcribe_many = transcribe_many
        self.max_batch, self.wait_s, self.max_queue = max_batch, wait_ms / 1000, max_queue
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=max_queue)
        # One thread: the model already uses every core through torch's intra-op threads.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._worker: asyncio.Task[None] | None = None
        self._running = False

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        self._executor.shutdown(wait=True)

    def depth(self) -> int:
        """Clips waiting for the recognizer (not counting the batch being recognized)."""
        return self._queue.qsize()

    def busy(self) -> bool:
        """A batch is being recognized or clips are waiting."""
        return self._running or not self._queue.empty()

    async def submit(self, audio: bytes) -> Transcript:
        """Recognize one clip; raises the clip's `AudioError`, or `OverloadedError` when full."""
        job = _Job(audio, asyncio.get_running_loop().create_future(), time.perf_counter())
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            raise OverloadedError(
                f"recognition queue is full ({self.max_queue} waiting); retry shortly", retry_after_s=1
            ) from None
        return await job.future

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
                if job.future.done():  # the client went away
                    continue
                if isinstance(result, BaseException):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)
