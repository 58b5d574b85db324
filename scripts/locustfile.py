"""Locust users for scripts/bench_cluster.py: voice searches in a closed loop.

Each user posts a clip to `/v1/search` as soon as its previous answer came back (no think time),
so the number of users is the concurrency. Every answer's status, request id and latency is kept
and written to `VOICE_SEARCH_BENCH_ANSWERS` (JSON) when the run stops, so the benchmark can check
each acknowledged request against the event store.

Settings (environment): VOICE_SEARCH_BENCH_CLIPS, a folder of audio clips (other files are left
out); VOICE_SEARCH_BENCH_ANSWERS, where to write the answers (optional); VOICE_SEARCH_BENCH_SESSION,
a prefix for session ids. The README's deployment walk uses it as traffic for a canary:

    VOICE_SEARCH_BENCH_CLIPS=data/samples .venv/bin/locust -f scripts/locustfile.py --headless \
        --host http://127.0.0.1:8000 --users 2 --run-time 15m
"""

import itertools
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from locust import HttpUser, constant, events, task

from asr.audio import AUDIO_SUFFIXES

CLIPS = [
    p.read_bytes()
    for p in sorted(Path(os.environ["VOICE_SEARCH_BENCH_CLIPS"]).iterdir())
    if p.suffix.lower() in AUDIO_SUFFIXES
]
ANSWERS: list[dict[str, Any]] = []
_next_clip = itertools.count()


class Searcher(HttpUser):
    wait_time = constant(0)

    @task
    def search(self) -> None:
        clip = CLIPS[next(_next_clip) % len(CLIPS)]
        session = f"{os.environ.get('VOICE_SEARCH_BENCH_SESSION', 'bench')}-{uuid.uuid4().hex[:12]}"
        started = time.time()
        with self.client.post(
            "/v1/search",
            params={"session_id": session},
            data=clip,
            headers={"content-type": "audio/flac"},
            name="/v1/search",
            catch_response=True,
        ) as response:
            ANSWERS.append(
                {
                    "at": started,
                    "latency_s": time.time() - started,
                    "status": response.status_code,
                    "request_id": response.headers.get("x-request-id"),
                    "error_type": _error_type(response),
                }
            )


def _error_type(response: Any) -> str | None:
    if response.status_code < 400:
        return None
    try:
        return str(response.json()["error"]["type"])
    except (ValueError, KeyError, TypeError):
        return None


@events.test_stop.add_listener  # type: ignore[untyped-decorator]
def _write_answers(**_: Any) -> None:
    if "VOICE_SEARCH_BENCH_ANSWERS" in os.environ:
        Path(os.environ["VOICE_SEARCH_BENCH_ANSWERS"]).write_text(json.dumps(ANSWERS))
