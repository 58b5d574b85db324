"""The micro-batcher in isolation, with a fake pipeline: grouping, per-item errors, overload."""

import asyncio
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import pytest

from asr.errors import AudioError, UndecodableAudioError
from asr.pipeline import Transcript
from serving.batching import MicroBatcher
from serving.http_errors import OverloadedError


class FakePipeline:
    """Records each batch it is given; 'bad' inputs fail, others echo their bytes as text."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[list[bytes]] = []
        self.gate = gate

    def transcribe_many(self, sources: Sequence[bytes]) -> list[Transcript | AudioError]:
        if self.gate is not None:
            self.gate.wait(timeout=10)
        self.batches.append(list(sources))
        return [UndecodableAudioError("bad") if s == b"bad" else s.decode() for s in sources]  # type: ignore[misc]


T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def test_concurrent_requests_share_one_batch_and_get_their_own_results() -> None:
    fake = FakePipeline()

    async def scenario() -> list[Any]:  # the fake "transcripts" are the input strings
        batcher = MicroBatcher(fake.transcribe_many, max_batch=8, wait_ms=50, max_queue=16)
        batcher.start()
        results = await asyncio.gather(
            *(batcher.submit(x) for x in (b"a", b"b", b"bad", b"c")), return_exceptions=True
        )
        await batcher.stop()
        return results

    results = run(scenario())
    assert results[:2] == ["a", "b"] and results[3] == "c"
    assert isinstance(results[2], UndecodableAudioError)
    assert fake.batches == [[b"a", b"b", b"bad", b"c"]]


def test_batch_size_one_turns_batching_off() -> None:
    fake = FakePipeline()

    async def scenario() -> None:
        batcher = MicroBatcher(fake.transcribe_many, max_batch=1, wait_ms=50, max_queue=16)
        batcher.start()
        await asyncio.gather(*(batcher.submit(x) for x in (b"a", b"b", b"c")))
        await batcher.stop()

    run(scenario())
    assert fake.batches == [[b"a"], [b"b"], [b"c"]]


def test_a_full_queue_refuses_at_once_and_the_batcher_recovers() -> None:
    gate = threading.Event()
    fake = FakePipeline(gate)

    async def scenario() -> tuple[list[object], object]:
        batcher = MicroBatcher(fake.transcribe_many, max_batch=1, wait_ms=0, max_queue=2)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(b"a"))
        await asyncio.sleep(0.05)  # the worker has taken "a" and is blocked in the pipeline
        queued = [asyncio.ensure_future(batcher.submit(x)) for x in (b"b", b"c")]
        await asyncio.sleep(0)
        with pytest.raises(OverloadedError) as refused:
            await batcher.submit(b"d")
        gate.set()
        results = await asyncio.gather(first, *queued)
        after = await batcher.submit(b"e")
        await batcher.stop()
        return [refused.value.retry_after_s, *results], after

    results, after = run(scenario())
    assert results == [1, "a", "b", "c"] and after == "e"


def test_requests_that_queued_meanwhile_go_together_even_with_no_wait() -> None:
    gate = threading.Event()
    fake = FakePipeline(gate)

    async def scenario() -> None:
        batcher = MicroBatcher(fake.transcribe_many, max_batch=8, wait_ms=0, max_queue=16)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(b"a"))
        await asyncio.sleep(0.05)  # "a" is in the pipeline; the next three wait in the queue
        rest = [asyncio.ensure_future(batcher.submit(x)) for x in (b"b", b"c", b"d")]
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.gather(first, *rest)
        await batcher.stop()

    run(scenario())
    assert fake.batches == [[b"a"], [b"b", b"c", b"d"]]


def test_clips_are_prepared_on_their_own_thread_while_the_model_runs_a_batch() -> None:
    gate = threading.Event()
    fake = FakePipeline(gate)
    prepared_on: list[str] = []
    recognized_on: list[str] = []
    prepare_calls: list[list[bytes]] = []

    def prepare(audios: Sequence[bytes]) -> list[bytes]:
        prepared_on.append(threading.current_thread().name)
        prepare_calls.append(list(audios))
        return [a.upper() for a in audios]

    def recognize(items: Sequence[bytes]) -> list[Transcript | AudioError]:
        recognized_on.append(threading.current_thread().name)
        return fake.transcribe_many(items)

    async def scenario() -> list[Any]:
        batcher = MicroBatcher(recognize, max_batch=8, wait_ms=0, max_queue=16, prepare=prepare)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(b"a"))
        await asyncio.sleep(0.05)  # "a" is in the model, which is held by the gate
        rest = [asyncio.ensure_future(batcher.submit(x)) for x in (b"b", b"c")]
        await asyncio.sleep(0.05)
        during = sum(map(len, prepare_calls))  # prepared while the model was still busy with "a"
        gate.set()
        results = await asyncio.gather(first, *rest)
        await batcher.stop()
        return [during, *results]

    during, *results = run(scenario())
    assert during == 3 and results == ["A", "B", "C"]
    assert fake.batches == [[b"A"], [b"B", b"C"]]  # the model got the prepared items
    assert prepare_calls == [[b"a"], [b"b", b"c"]]  # the clips that waited were prepared together
    assert set(prepared_on) & set(recognized_on) == set()  # two threads


def test_the_queue_bound_counts_clips_still_being_prepared() -> None:
    hold = threading.Event()

    def prepare(audios: Sequence[bytes]) -> list[bytes]:
        hold.wait(timeout=10)
        return list(audios)

    async def scenario() -> object:
        batcher = MicroBatcher(
            FakePipeline().transcribe_many, max_batch=8, wait_ms=0, max_queue=2, prepare=prepare
        )
        batcher.start()
        waiting = [asyncio.ensure_future(batcher.submit(x)) for x in (b"a", b"b")]
        await asyncio.sleep(0.05)
        assert batcher.depth() == 2 and batcher.busy()
        with pytest.raises(OverloadedError):
            await batcher.submit(b"c")
        hold.set()
        results = await asyncio.gather(*waiting)
        await batcher.stop()
        return results

    assert run(scenario()) == ["a", "b"]


def test_an_unusable_clip_fails_alone_after_the_prepare_stage() -> None:
    def prepare(audios: Sequence[bytes]) -> list[Any]:
        return [UndecodableAudioError("bad") if a == b"bad" else a for a in audios]

    def recognize(items: Sequence[Any]) -> list[Any]:  # as Pipeline.recognize_prepared: errors pass through
        return [i if isinstance(i, AudioError) else i.decode() for i in items]

    async def scenario() -> list[Any]:
        batcher = MicroBatcher(recognize, max_batch=8, wait_ms=20, max_queue=16, prepare=prepare)
        batcher.start()
        results = await asyncio.gather(
            *(batcher.submit(x) for x in (b"a", b"bad", b"c")), return_exceptions=True
        )
        await batcher.stop()
        return results

    results = run(scenario())
    assert results[0] == "a" and results[2] == "c" and isinstance(results[1], UndecodableAudioError)
