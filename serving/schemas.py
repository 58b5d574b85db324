"""Request and response models of the HTTP API (pydantic: the HTTP edge only)."""

from typing import Any, Literal

from pydantic import BaseModel, Field

from asr.preprocess import ClipStats


class ErrorDetail(BaseModel):
    type: str
    message: str
    request_id: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Hit(BaseModel):
    id: str
    title: str
    score: float = Field(description="match score in [0, 1]")
    matched: str = Field(description="the catalog name (title or alias) that matched")
    fields: dict[str, Any] = Field(default_factory=dict)


class InputStats(BaseModel):
    duration_s: float
    rms_dbfs: float
    peak_dbfs: float
    clipping_ratio: float
    leading_silence_ms: float
    trailing_silence_ms: float
    speech_ratio: float
    missing_audio: bool

    @classmethod
    def from_stats(cls, stats: ClipStats) -> "InputStats":
        return cls(
            duration_s=stats.duration_s,
            rms_dbfs=stats.rms_dbfs,
            peak_dbfs=stats.peak_dbfs,
            clipping_ratio=stats.clipping_ratio,
            leading_silence_ms=stats.leading_silence_ms,
            trailing_silence_ms=stats.trailing_silence_ms,
            speech_ratio=stats.speech_ratio,
            missing_audio=stats.is_all_zero,
        )


class SearchResponse(BaseModel):
    request_id: str
    session_id: str
    query: str = Field(description="the transcript (voice) or the typed text, normalized")
    transcript: str | None = Field(description="what was recognized; null for a typed search")
    confidence: float | None
    hits: list[Hit]
    no_result: bool = Field(description="nothing in the catalog matched")
    null_transcript: bool = Field(description="no speech was recognized (silence, noise, muted mic)")
    model_version: str | None
    slot: str
    timings_ms: dict[str, float] = Field(
        description="per stage: decode, preprocess, vad, asr, decoding, search"
    )
    input: InputStats | None = None
    automation: str = Field(default="full", description="the degree of automation that answered")
    needs_confirmation: bool = Field(
        default=False, description="assist: the transcript is a suggestion to confirm"
    )
    sent_for_review: bool = Field(
        default=False, description="a person answers this one (202): see /v1/review"
    )
    review_id: int | None = None


class TextSearchRequest(BaseModel):
    session_id: str = Field(min_length=1, max_length=200)
    user_id: str | None = Field(default=None, max_length=200)
    query: str = Field(min_length=1, max_length=500)


class Word(BaseModel):
    word: str
    start_s: float
    end_s: float
    confidence: float


class Segment(BaseModel):
    start_s: float
    end_s: float
    text: str
    confidence: float
    words: list[Word]


class TranscribeResponse(BaseModel):
    request_id: str
    text: str
    confidence: float
    segments: list[Segment]
    duration_s: float
    no_speech: bool
    model_version: str
    slot: str
    timings_ms: dict[str, float]


class FeedbackRequest(BaseModel):
    request_id: str = Field(min_length=1, description="the search the feedback is about")
    session_id: str | None = Field(default=None, max_length=200)
    kind: Literal["click", "correction"]
    item_id: str | None = Field(default=None, description="the clicked hit (kind=click)")
    corrected_text: str | None = Field(default=None, max_length=500, description="kind=correction")


class FeedbackResponse(BaseModel):
    request_id: str
    recorded: bool = True


class Health(BaseModel):
    status: str


class VersionInfo(BaseModel):
    service: str
    model_version: str
    slot: str
    domain: str
    bias_decoding: bool
    replica: int = Field(description="this process's id (several replicas may answer behind one address)")
    leader: bool = Field(description="whether this replica judges alarms, the canary and retraining")


class Faults(BaseModel):
    asr_delay_ms: float = Field(
        0.0,
        ge=0,
        le=60_000,
        strict=True,
        description="added to every model call (a number: `false` is not 0)",
    )
