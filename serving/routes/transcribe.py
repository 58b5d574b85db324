"""Transcription: the plain API, and the OpenAI-compatible `/v1/audio/transcriptions`."""

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from asr.pipeline import Segment, Transcript
from serving import schemas
from serving.deps import Service, read_audio_request
from serving.http_errors import BadRequestError
from serving.recording import draft_of, note_audio
from serving.routes.common import ERRORS, audio_body

router = APIRouter(prefix="/v1", tags=["transcription"])

OPENAI_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")


@router.post(
    "/transcribe",
    response_model=schemas.TranscribeResponse,
    responses=ERRORS,
    openapi_extra=audio_body("session_id"),
    summary="Transcribe audio (no search)",
)
async def transcribe(request: Request, service: Service) -> schemas.TranscribeResponse:
    event = draft_of(request)
    event.kind = "transcribe"
    upload = await read_audio_request(request, service.settings.max_upload_bytes)
    event.session_id = upload.text("session_id")
    await note_audio(event, upload.audio, upload.content_type, service.settings.retained_audio_dir)
    event.transcript = result = await service.batcher.submit(upload.audio)
    return schemas.TranscribeResponse(
        request_id=event.request_id,
        text=result.text,
        confidence=round(result.confidence, 4),
        segments=[_segment(s) for s in result.segments],
        duration_s=result.duration_s,
        no_speech=result.no_speech,
        model_version=result.model_version,
        slot=service.settings.slot,
        timings_ms=event.timings_ms(),
    )


@router.post(
    "/audio/transcriptions",
    responses=ERRORS,
    openapi_extra=audio_body("model", "response_format", "language", "prompt", "temperature"),
    summary="OpenAI-compatible transcription",
    description="Accepts the OpenAI audio transcription request (multipart `file`, `model`, "
    f"`response_format` one of {', '.join(OPENAI_FORMATS)}); `model` is accepted and ignored: this "
    "service answers with its own model.",
)
async def openai_transcriptions(request: Request, service: Service) -> Response:
    event = draft_of(request)
    event.kind = "openai_transcription"
    upload = await read_audio_request(request, service.settings.max_upload_bytes)
    fmt = upload.text("response_format") or "json"
    if fmt not in OPENAI_FORMATS:
        raise BadRequestError(f"response_format must be one of {', '.join(OPENAI_FORMATS)}, not {fmt!r}")
    await note_audio(event, upload.audio, upload.content_type, service.settings.retained_audio_dir)
    event.transcript = result = await service.batcher.submit(upload.audio)
    if fmt == "json":
        return JSONResponse({"text": result.text})
    if fmt == "text":
        return PlainTextResponse(result.text + "\n")
    if fmt == "verbose_json":
        return JSONResponse(_verbose_json(result))
    return PlainTextResponse(_subtitles(result.segments, vtt=fmt == "vtt"), media_type="text/plain")


def _segment(s: Segment) -> schemas.Segment:
    return schemas.Segment(
        start_s=s.start_s,
        end_s=s.end_s,
        text=s.text,
        confidence=round(s.confidence, 4),
        words=[
            schemas.Word(word=w.word, start_s=w.start_s, end_s=w.end_s, confidence=round(w.confidence, 4))
            for w in s.words
        ],
    )


def _verbose_json(result: Transcript) -> dict[str, Any]:
    return {
        "task": "transcribe",
        "language": "english",
        "duration": result.duration_s,
        "text": result.text,
        "segments": [
            {
                "id": i,
                "seek": 0,
                "start": s.start_s,
                "end": s.end_s,
                "text": s.text,
                "tokens": [],
                "temperature": 0.0,
                "avg_logprob": 0.0,
                "compression_ratio": 1.0,
                "no_speech_prob": 0.0,  # the VAD found speech here; there is no separate estimate
            }
            for i, s in enumerate(result.segments)
        ],
        "words": [
            {"word": w.word, "start": w.start_s, "end": w.end_s} for s in result.segments for w in s.words
        ],
    }


def _subtitles(segments: tuple[Segment, ...], vtt: bool) -> str:
    def stamp(seconds: float) -> str:
        ms = round(seconds * 1000)
        h, rest = divmod(ms, 3_600_000)
        m, rest = divmod(rest, 60_000)
        s, ms = divmod(rest, 1000)
        return f"{h:02d}:{m:02d}:{s:02d}{'.' if vtt else ','}{ms:03d}"

    blocks = [
        ("" if vtt else f"{i}\n") + f"{stamp(s.start_s)} --> {stamp(s.end_s)}\n{s.text}\n"
        for i, s in enumerate(segments, 1)
    ]
    return ("WEBVTT\n\n" if vtt else "") + "\n".join(blocks)
