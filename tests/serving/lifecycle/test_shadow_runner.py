"""The shadow queue in isolation (a fake challenger): drops when full, waits for a quiet
champion, and records what the challenger said and what it refused, pointing at the search."""

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from asr.errors import EmptyAudioError
from monitoring.events import Event, SQLiteEventStore
from serving.batching import MicroBatcher
from serving.lifecycle.rollout import ModelSlot, ShadowJob, ShadowRunner


class FakeChallenger:
    """Says the clip's bytes as its transcript; an empty clip is an audio error."""

    def __init__(self) -> None:
        self.heard: list[bytes] = []

    async def submit(self, audio: bytes) -> Any:
        self.heard.append(audio)
        if not audio:
            raise EmptyAudioError("no audio")
        return SimpleNamespace(text=audio.decode(), confidence=0.5, no_speech=False, timings_s={"asr": 0.01})


def test_shadow_queue_drops_when_full_waits_for_a_quiet_champion_and_records(tmp_path: Path) -> None:
    challenger = FakeChallenger()
    busy = {"champion": True}

    async def scenario() -> tuple[ShadowRunner, list[Event]]:
        store = SQLiteEventStore(tmp_path / "events.sqlite3")
        slot = ModelSlot("challenger", cast(MicroBatcher, challenger), "c@1")
        runner = ShadowRunner(slot, lambda: busy["champion"], store, max_queue=2, quiet_s=0.05)
        worker = asyncio.create_task(runner.run())
        offers = [
            runner.offer(ShadowJob(audio, f"r{i}", "s", 100.0 + i))
            for i, audio in enumerate([b"a b", b"", b"c"])
        ]
        assert offers == [True, True, False]  # the third is dropped: the queue holds two
        await asyncio.sleep(0.3)
        assert challenger.heard == []  # the champion is busy: the challenger waits
        busy["champion"] = False
        for _ in range(200):
            if runner.stats.recorded == 2:
                break
            await asyncio.sleep(0.01)
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
        events = store.events()
        store.close()
        return runner, events

    runner, events = asyncio.run(scenario())
    assert (runner.stats.offered, runner.stats.dropped, runner.stats.recorded) == (3, 1, 2)
    by_target = {e.target_request_id: e for e in events}
    assert by_target["r0"].transcript == "a b" and by_target["r0"].outcome == "ok"
    assert by_target["r0"].kind == "shadow" and by_target["r0"].slot == "challenger"
    assert by_target["r1"].outcome == "server_error" and by_target["r1"].error_type == "EmptyAudioError"
