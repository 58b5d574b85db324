"""What routes note on a request's event (the recording middleware writes it)."""

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from asr.pipeline import STAGES, Transcript
from serving.deps import AudioRequest, ServiceState


def event_of(request: Request) -> dict[str, Any]:
    """The event fields of this request, filled in as the route learns them."""
    fields: dict[str, Any] = request.state.event
    return fields


async def note_audio(request: Request, upload: AudioRequest, service: ServiceState) -> None:
    """Note the upload's size and type; keep the audio itself only when retention is enabled."""
    event = event_of(request)
    event.update(audio_bytes=len(upload.audio), content_type=upload.content_type)
    if service.settings.retain_audio and upload.audio:
        path = service.settings.audio_dir / f"{request.state.request_id}.audio"
        await run_in_threadpool(_write, path, upload.audio)
        event["audio_path"] = str(path)


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def transcript_fields(transcript: Transcript) -> dict[str, Any]:
    """The event fields a transcript fills in (the service's events and the reference profile)."""
    return dict(
        transcript=transcript.text,
        confidence=round(transcript.confidence, 4),
        model_version=transcript.model_version,
        **asdict(transcript.stats),  # the event's input columns are named after ClipStats' fields
        sample_rate_hz=transcript.source_sample_rate_hz,
        timings_s=dict(transcript.timings_s),
        outcome="null_transcript" if transcript.no_speech else "ok",
    )


def note_transcript(request: Request, transcript: Transcript) -> None:
    event_of(request).update(transcript_fields(transcript))


def timings_ms(request: Request) -> dict[str, float]:
    """Per-stage milliseconds noted so far, plus the total since the request arrived."""
    stages: dict[str, float] = event_of(request).get("timings_s", {})
    out = {stage: round(1000 * stages[stage], 2) for stage in (*STAGES, "search") if stage in stages}
    out["total"] = round(1000 * (time.time() - request.state.received_at), 2)
    return out
