"""The HTTP API end to end: a real server process, the bundled model, a real SQLite event store."""

import asyncio
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from monitoring.events import SQLiteEventStore
from monitoring.sessions import session_signals
from serving.local_server import Server, running_server
from tests.serving.events import event, rows
from tests.signals import encode, espeak, noise, silence, speech

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def query_wav() -> bytes:
    samples, rate = espeak("weather in paris")
    return encode(samples, rate)


def test_health_readiness_version_and_docs(server: Server) -> None:
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(server.url + "/readyz").json() == {"status": "ready"}
    version = httpx.get(server.url + "/version").json()
    assert version["model_version"].startswith("voice-search-small@")
    assert version["domain"] == "places"
    spec = httpx.get(server.url + "/openapi.json").json()
    for path in (
        "/v1/search",
        "/v1/search/text",
        "/v1/transcribe",
        "/v1/feedback",
        "/v1/audio/transcriptions",
    ):
        assert path in spec["paths"]
    assert httpx.get(server.url + "/docs").status_code == 200


def test_voice_search_by_multipart_and_raw_body_answers_and_records(server: Server, query_wav: bytes) -> None:
    multipart = httpx.post(
        server.url + "/v1/search",
        files={"file": ("q.wav", query_wav, "audio/wav")},
        data={"session_id": "s-multi", "user_id": "u1"},
        timeout=60,
    )
    raw = httpx.post(
        server.url + "/v1/search",
        params={"session_id": "s-raw"},
        content=query_wav,
        headers={"content-type": "audio/wav"},
        timeout=60,
    )
    for response, session in ((multipart, "s-multi"), (raw, "s-raw")):
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["session_id"] == session
        assert body["request_id"] == response.headers["x-request-id"]
        assert body["model_version"].startswith("voice-search-small@")
        assert body["slot"] == "primary"
        assert {"decode", "preprocess", "vad", "asr", "decoding", "total"} <= set(body["timings_ms"])
        assert body["no_result"] == (not body["hits"])
        assert body["input"]["duration_s"] == pytest.approx(len(query_wav) / 2 / 22050, abs=0.05)
        row = event(server, body["request_id"])
        assert row["kind"] == "voice_search" and row["status_code"] == 200 and row["session_id"] == session
        assert row["transcript"] == body["transcript"]
        assert row["sample_rate_hz"] == 22050 and row["audio_bytes"] == len(query_wav)
        assert row["outcome"] in ("ok", "no_result", "null_transcript")
        assert row["audio_path"] is None  # retention is off by default: recordings are personal data
    assert multipart.json()["transcript"] == raw.json()["transcript"]  # same audio, same answer
    assert event(server, multipart.json()["request_id"])["user_id"] == "u1"


def test_voice_search_finds_names_its_own_transcript_misses(server: Server) -> None:
    """The real model and server: ranking by the catalog names spotted in the audio finds the
    intended entry first more often than a search of the transcript the same request produced
    (6 of these 6 against 2 with the bundled model of 2026-12-07, which writes "capital of sura",
    "flights town a do do", "weather in one two", "weather in ho dar about"; its predecessor
    heard few enough names that easier ones did; a model that hears all six needs harder ones)."""
    queries = {
        "weather in paris": "Paris",
        "capital of germany": "Germany",
        "flights to ouagadougou": "Ouagadougou",
        "weather in guangzhou": "Guangzhou",
        "weather in hyderabad": "Hyderabad",
        "flights to tokyo": "Tokyo",
    }
    by_audio = by_transcript = 0
    for text, title in queries.items():
        samples, rate = espeak(text)
        voice = httpx.post(
            server.url + "/v1/search",
            params={"session_id": "s-spotting"},
            content=encode(samples, rate),
            headers={"content-type": "audio/wav"},
            timeout=60,
        ).json()
        typed = httpx.post(
            server.url + "/v1/search/text",
            json={"session_id": "s-spotting-typed", "query": voice["transcript"]},
            timeout=60,
        ).json()
        by_audio += bool(voice["hits"]) and voice["hits"][0]["title"] == title
        by_transcript += bool(typed["hits"]) and typed["hits"][0]["title"] == title
        assert all(0 < h["score"] <= 1 for h in voice["hits"])
    assert by_audio > by_transcript


def test_text_search_finds_a_misspelled_catalog_item(server: Server) -> None:
    response = httpx.post(
        server.url + "/v1/search/text", json={"session_id": "s-text", "query": "weather in pariss"}
    )
    body = response.json()
    assert response.status_code == 200
    assert body["hits"][0]["title"] == "Paris" and body["transcript"] is None
    assert event(server, body["request_id"])["query_text"] == "weather in pariss"
    nothing = httpx.post(
        server.url + "/v1/search/text", json={"session_id": "s-text", "query": "qqqq zzzz"}
    ).json()
    assert nothing["no_result"] is True and nothing["hits"] == []
    assert event(server, nothing["request_id"])["outcome"] == "no_result"


def test_silence_is_a_null_transcript_not_an_error(server: Server) -> None:
    response = httpx.post(
        server.url + "/v1/search",
        params={"session_id": "s-silent"},
        content=encode(silence(1.5), 16_000),
        headers={"content-type": "audio/wav"},
        timeout=60,
    )
    body = response.json()
    assert response.status_code == 200
    assert body["null_transcript"] is True and body["transcript"] == "" and body["hits"] == []
    assert body["input"]["missing_audio"] is True
    row = event(server, body["request_id"])
    assert row["outcome"] == "null_transcript" and row["is_all_zero"] == 1


def _truncated_wav() -> bytes:
    return encode(noise(2.0, amplitude=0.1), 16_000)[:20_000]


BAD_INPUTS = [
    (
        "not audio",
        {"content": b"this is plain text, not audio" * 10, "headers": {"content-type": "audio/wav"}},
        415,
    ),
    ("truncated", {"content": _truncated_wav(), "headers": {"content-type": "audio/wav"}}, 422),
    ("empty body", {"content": b"", "headers": {"content-type": "audio/wav"}}, 400),
    ("json body", {"json": {"audio": "x"}}, 415),
    (
        "too long clip",
        {
            "content": encode(noise(31.0, rate=8_000, amplitude=0.1), 8_000),
            "headers": {"content-type": "audio/wav"},
        },
        422,
    ),
    (
        "oversized upload",
        {"content": b"\0" * (10 * 1024 * 1024 + 1), "headers": {"content-type": "audio/wav"}},
        413,
    ),
    # Sent chunked, with no Content-Length: refused while reading, not after.
    (
        "oversized stream",
        {"content": iter([b"\0" * 1024 * 1024] * 11), "headers": {"content-type": "audio/wav"}},
        413,
    ),
    ("no file field", {"files": {"other": ("x.wav", b"RIFF", "audio/wav")}}, 422),
]


@pytest.mark.parametrize(("name", "request_args", "status"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_audio_gets_a_clear_4xx_json_error_and_is_recorded(
    server: Server, name: str, request_args: dict[str, Any], status: int
) -> None:
    response = httpx.post(
        server.url + "/v1/search", params={"session_id": "s-bad"}, timeout=60, **request_args
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] and error["message"] and error["request_id"] == response.headers["x-request-id"]
    row = event(server, error["request_id"])
    assert (
        row["status_code"] == status
        and row["outcome"] == "client_error"
        and row["error_type"] == error["type"]
    )


@pytest.mark.parametrize(
    ("path", "kwargs"),
    [
        ("/v1/search", {"content": b"", "headers": {"content-type": "audio/wav"}}),  # no session_id
        ("/v1/search/text", {"json": {"session_id": "s"}}),  # no query
        ("/v1/search/text", {"content": b"{not json", "headers": {"content-type": "application/json"}}),
        ("/v1/feedback", {"json": {"request_id": "x", "kind": "like"}}),
        (
            "/v1/audio/transcriptions",
            {"files": {"file": ("a.wav", b"x", "audio/wav")}, "data": {"response_format": "xml"}},
        ),
    ],
)
def test_missing_or_invalid_fields_are_422_and_recorded(
    server: Server, path: str, kwargs: dict[str, Any]
) -> None:
    response = httpx.post(server.url + path, timeout=60, **kwargs)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"]["type"] == "invalid_request"
    assert event(server, body["error"]["request_id"])["status_code"] == 422


def test_feedback_on_unknown_request_is_404(server: Server) -> None:
    response = httpx.post(
        server.url + "/v1/feedback", json={"request_id": "nope", "kind": "click", "item_id": "x"}
    )
    assert response.status_code == 404 and response.json()["error"]["type"] == "not_found"
    assert event(server, response.headers["x-request-id"])["kind"] == "feedback"


@pytest.mark.parametrize(
    ("method", "path", "status"), [("POST", "/v1/nope", 404), ("GET", "/v1/search", 405)]
)
def test_unknown_routes_and_methods_get_the_json_error_and_an_event(
    server: Server, method: str, path: str, status: int
) -> None:
    response = httpx.request(method, server.url + path)
    assert response.status_code == status
    assert response.json()["error"]["request_id"] == response.headers["x-request-id"]
    assert event(server, response.headers["x-request-id"])["status_code"] == status


def test_an_oversized_json_body_is_413_before_it_is_read(server: Server) -> None:
    big = {"session_id": "s", "query": "x" * (10 * 1024 * 1024)}
    response = httpx.post(server.url + "/v1/search/text", json=big, timeout=60)
    assert response.status_code == 413 and response.json()["error"]["type"] == "payload_too_large"


def test_transcribe_returns_segments(server: Server, query_wav: bytes) -> None:
    response = httpx.post(
        server.url + "/v1/transcribe", files={"file": ("q.wav", query_wav, "audio/wav")}, timeout=60
    )
    body = response.json()
    assert response.status_code == 200
    assert body["duration_s"] > 0.5 and isinstance(body["segments"], list)
    assert body["text"] == " ".join(s["text"] for s in body["segments"])
    assert event(server, body["request_id"])["kind"] == "transcribe"


def _voice(server: Server, session: str, audio: bytes) -> str:
    response = httpx.post(
        server.url + "/v1/search",
        params={"session_id": session},
        content=audio,
        headers={"content-type": "audio/wav"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return str(response.json()["request_id"])


def test_redo_and_switch_to_typing_come_from_session_sequences(server: Server, query_wav: bytes) -> None:
    redone = _voice(server, "s-redo", query_wav)
    _voice(server, "s-redo", query_wav)
    typed = _voice(server, "s-typing", query_wav)
    httpx.post(
        server.url + "/v1/search/text", json={"session_id": "s-typing", "query": "paris"}
    ).raise_for_status()
    clicked = _voice(server, "s-click", query_wav)
    feedback = httpx.post(
        server.url + "/v1/feedback",
        json={"request_id": clicked, "kind": "click", "item_id": "city:2988507"},
    )
    assert feedback.status_code == 200
    _voice(server, "s-click", query_wav)
    correction = httpx.post(
        server.url + "/v1/feedback",
        json={"request_id": clicked, "kind": "correction", "corrected_text": "weather in paris"},
    )
    assert correction.status_code == 200

    store = SQLiteEventStore(server.db_path)
    try:
        sessions = [e for e in store.events() if e.session_id in ("s-redo", "s-typing", "s-click")]
    finally:
        store.close()
    signals = session_signals(sessions, redo_window_s=30)
    assert signals.redo == (redone,)
    assert signals.switch_to_typing == (typed,)
    assert signals.clicked == (clicked,)
    assert signals.voice_searches == 5
    labels = [(e.kind, e.clicked_id, e.corrected_text) for e in sessions if e.target_request_id == clicked]
    assert labels == [("feedback", "city:2988507", None), ("feedback", None, "weather in paris")]
    assert all(e.session_id == "s-click" for e in sessions if e.target_request_id == clicked)


def test_every_request_left_exactly_one_event_and_the_store_is_intact(server: Server) -> None:
    before = rows(server, "SELECT COUNT(*) FROM events")[0][0]
    ids = []
    for _ in range(3):
        ids.append(
            httpx.post(
                server.url + "/v1/search/text", json={"session_id": "s-count", "query": "rome"}
            ).headers["x-request-id"]
        )
        ids.append(
            httpx.post(
                server.url + "/v1/search", content=b"junk", headers={"content-type": "audio/wav"}
            ).headers["x-request-id"]
        )
    assert rows(server, "SELECT COUNT(*) FROM events")[0][0] == before + 6
    assert (
        len(
            {
                r[0]
                for r in rows(
                    server, f"SELECT request_id FROM events WHERE request_id IN ({','.join('?' * 6)})", *ids
                )
            }
        )
        == 6
    )
    assert rows(server, "PRAGMA integrity_check") == [("ok",)]
    assert rows(server, "PRAGMA journal_mode") == [("wal",)]


def test_overload_is_shed_with_503_and_retry_after_then_recovers(tmp_path: Path) -> None:
    samples, rate = speech()
    clip = encode(np.tile(samples, 3), rate)  # ~10 s of speech: the first request keeps the worker busy
    with running_server(tmp_path, max_queue="1", micro_batch_size="1", bias_decoding="false") as small:

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=120) as client:
                return await asyncio.gather(
                    *[
                        client.post(
                            small.url + "/v1/transcribe", content=clip, headers={"content-type": "audio/wav"}
                        )
                        for _ in range(8)
                    ]
                )

        responses = asyncio.run(burst())
        statuses = sorted(r.status_code for r in responses)
        assert 503 in statuses and 200 in statuses and set(statuses) <= {200, 503}, statuses
        shed = next(r for r in responses if r.status_code == 503)
        assert shed.headers["retry-after"] == "1" and shed.json()["error"]["type"] == "overloaded"
        after = httpx.post(
            small.url + "/v1/transcribe", content=clip, headers={"content-type": "audio/wav"}, timeout=60
        )
        assert after.status_code == 200
        assert rows(small, "SELECT COUNT(*) FROM events")[0][0] == 9
        assert rows(small, "SELECT COUNT(*) FROM events WHERE status_code = 503")[0][0] == statuses.count(503)


def test_audio_is_kept_only_when_retention_is_enabled(tmp_path: Path, query_wav: bytes) -> None:
    with running_server(tmp_path, retain_audio="true", bias_decoding="false") as keeping:
        request_id = _voice(keeping, "s-keep", query_wav)
        path = event(keeping, request_id)["audio_path"]
        assert isinstance(path, str) and Path(path).read_bytes() == query_wav
