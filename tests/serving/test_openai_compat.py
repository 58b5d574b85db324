"""The OpenAI-compatible transcription route, driven by the official `openai` client."""

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from asr.pipeline import Segment
from serving.local_server import Server, running_server
from serving.routes.transcribe import _subtitles
from tests.signals import SPEECH_SAMPLE

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("openai"), bias_decoding="false") as running:
        yield running


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="not-needed", max_retries=0)


def test_json_and_text_formats_agree(client: openai.OpenAI) -> None:
    with SPEECH_SAMPLE.open("rb") as f:
        as_json = client.audio.transcriptions.create(model="whisper-1", file=f)
    with SPEECH_SAMPLE.open("rb") as f:
        as_text = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="text")
    assert isinstance(as_json.text, str)
    assert str(as_text).strip() == as_json.text


def test_verbose_json_has_duration_and_segments(client: openai.OpenAI) -> None:
    with SPEECH_SAMPLE.open("rb") as f:
        verbose = client.audio.transcriptions.create(
            model="whisper-1", file=f, response_format="verbose_json"
        )
    assert verbose.duration == pytest.approx(3.3, abs=0.1)
    assert verbose.text == " ".join(s.text for s in verbose.segments or [])


@pytest.mark.parametrize("fmt", ["srt", "vtt"])
def test_subtitle_formats_match_the_segments(client: openai.OpenAI, fmt: str) -> None:
    with SPEECH_SAMPLE.open("rb") as f:
        subtitles = str(client.audio.transcriptions.create(model="whisper-1", file=f, response_format=fmt))  # type: ignore[call-overload]
    with SPEECH_SAMPLE.open("rb") as f:
        verbose = client.audio.transcriptions.create(
            model="whisper-1", file=f, response_format="verbose_json"
        )
    segments = tuple(Segment(s.start, s.end, s.text, 1.0, ()) for s in verbose.segments or [])
    assert subtitles == _subtitles(segments, vtt=fmt == "vtt")


def test_subtitle_text_format() -> None:
    segments = (Segment(0.5, 1.25, "weather in paris", 0.9, ()), Segment(61.0, 3661.5, "next", 0.8, ()))
    assert _subtitles(segments, vtt=False) == (
        "1\n00:00:00,500 --> 00:00:01,250\nweather in paris\n\n2\n00:01:01,000 --> 01:01:01,500\nnext\n"
    )
    vtt = _subtitles(segments, vtt=True)
    assert vtt.startswith("WEBVTT\n\n00:00:00.500 --> 00:00:01.250\nweather in paris\n")


def test_a_bad_file_raises_the_clients_error_with_our_message(client: openai.OpenAI, tmp_path: Path) -> None:
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio at all")
    with pytest.raises(openai.APIStatusError) as caught, bad.open("rb") as f:
        client.audio.transcriptions.create(model="whisper-1", file=f)
    assert caught.value.status_code == 415
    assert "not a supported audio format" in caught.value.message
