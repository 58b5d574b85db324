"""Streaming voice search: the utterance as it arrives, endpointing, and the protocol's messages.

`WS /v1/search/stream?session_id=...` (the route: `serving/routes/stream.py`):
- client to server: an optional first text frame `{"sample_rate": 16000}` (8-48 kHz; 16 kHz when
  absent), then binary frames of little-endian int16 mono PCM of any size, then the text frame
  `{"event": "end"}` when the user stops;
- server to client: `{"type": "partial", "transcript", "hits", "stable"}` as speech arrives, at
  most every `stream_partial_ms`; then one `{"type": "final", ...}` with the body of
  `POST /v1/search` for the whole utterance, and the socket closes with 1000. The server ends the
  utterance itself after `stream_endpoint_ms` of silence following speech (the VAD's), without
  waiting for `end`;
- a page served from another origin needs that origin in `stream_allowed_origins`, or the admin
  token: `Authorization: Bearer <token>` from a program, or from a browser (which cannot set
  headers on a WebSocket) the subprotocols `voice-search` and `voice-search.bearer.<the token in
  base64url without padding>`; the server answers `voice-search`. Never `?token=`: access logs
  print URLs;
- an error is `{"type": "error", "error": {"type", "message", "request_id"}}`, then a close code:
  1003 data it cannot take (not PCM, odd length, a rate outside 8-48 kHz, an unknown message),
  1008 a policy (no session id, a foreign origin without the admin token, idle too long), 1009 an
  utterance over `api_max_clip_s`, 1013 too many streams or a full recognizer, 1011 a server fault.

The final is the upload's answer: the same WAV bytes through the same front end, VAD, model and
decoding, so the transcript is what `POST /v1/search` gives for that audio. Partials are CTC over
the latest `stream_left_context_s` of audio, recomputed at most every `stream_partial_ms`.
"""

import base64
import binascii
import io
import json
import threading
import wave
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.datastructures import Headers

from asr.audio import MAX_SAMPLE_RATE_HZ, MIN_SAMPLE_RATE_HZ, SAMPLE_RATE_HZ, load_audio
from asr.vad import SileroVAD, segments_from_probabilities

CLOSE_NORMAL, CLOSE_UNSUPPORTED, CLOSE_POLICY = 1000, 1003, 1008
CLOSE_TOO_BIG, CLOSE_SERVER_ERROR, CLOSE_TRY_LATER = 1009, 1011, 1013
SUBPROTOCOL = "voice-search"
"""The subprotocol a client may offer; a browser that cannot set headers offers the admin token
beside it as `voice-search.bearer.<the token, base64url without padding>`."""
STABLE_AFTER = 3
"""Partials that must agree on a word before it is `stable`."""
VAD_TAIL_S = 3.0
"""The latest audio the endpointer listens to: longer than any endpoint silence."""


class StreamError(Exception):
    """A stream the server ends: the error frame's type and message, the close code, and the
    HTTP status its event records (as the same fault would get from `POST /v1/search`)."""

    def __init__(self, kind: str, message: str, code: int, status: int = 400) -> None:
        super().__init__(message)
        self.kind, self.code, self.status = kind, code, status


@dataclass
class Utterance:
    """The PCM received so far."""

    max_s: float
    sample_rate: int = SAMPLE_RATE_HZ
    pcm: bytearray = field(default_factory=bytearray)

    def set_rate(self, rate: Any) -> None:
        if self.pcm:
            raise StreamError(
                "invalid_request", "the sample rate must come before the audio", CLOSE_UNSUPPORTED, 422
            )
        if not isinstance(rate, int) or not MIN_SAMPLE_RATE_HZ <= rate <= MAX_SAMPLE_RATE_HZ:
            raise StreamError(
                "unsupported_sample_rate",
                f"sample_rate must be an integer from {MIN_SAMPLE_RATE_HZ} to {MAX_SAMPLE_RATE_HZ} Hz, "
                f"not {rate!r}",
                CLOSE_UNSUPPORTED,
                422,
            )
        self.sample_rate = rate

    def add(self, data: bytes) -> None:
        if len(data) % 2:
            raise StreamError(
                "invalid_audio",
                f"a binary frame of {len(data)} bytes is not int16 PCM (odd length)",
                CLOSE_UNSUPPORTED,
                422,
            )
        self.pcm += data
        if self.duration_s > self.max_s:
            raise StreamError(
                "clip_too_long", f"the utterance is over the limit of {self.max_s:g} s", CLOSE_TOO_BIG, 422
            )

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / 2 / self.sample_rate

    def wav(self, last_s: float | None = None) -> bytes:
        """The utterance (or its latest `last_s`) as a 16-bit mono WAV file."""
        pcm = self.pcm
        if last_s is not None:
            pcm = pcm[-2 * int(last_s * self.sample_rate) :]
        out = io.BytesIO()
        with wave.open(out, "wb") as f:
            f.setnchannels(1)
            f.setsampwidth(2)
            f.setframerate(self.sample_rate)
            f.writeframes(bytes(pcm))
        return out.getvalue()


def offered_token(headers: Headers, subprotocols: Sequence[str]) -> str:
    """The admin token a client offers: `Authorization: Bearer` (a program), else the bearer
    subprotocol (a browser). Never the query string, which access logs print. `subprotocols`:
    the ASGI scope's, since servers keep them out of its headers."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token:
        return token
    prefix = f"{SUBPROTOCOL}.bearer."
    for offered in subprotocols:
        if offered.startswith(prefix):
            encoded = offered.removeprefix(prefix)
            try:
                return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
            except (binascii.Error, UnicodeDecodeError):
                return ""
    return ""


def parse_text_frame(text: str) -> dict[str, Any]:
    """A control message: `{"sample_rate": N}` or `{"event": "end"}`."""
    try:
        message = json.loads(text)
    except json.JSONDecodeError as e:
        raise StreamError("invalid_request", f"a text frame must be JSON: {e}", CLOSE_UNSUPPORTED, 422) from e
    if not isinstance(message, dict) or not ({"sample_rate", "event"} & message.keys()):
        raise StreamError(
            "invalid_request",
            'a text frame is {"sample_rate": N} first, or {"event": "end"}; the audio goes in binary frames',
            CLOSE_UNSUPPORTED,
            422,
        )
    if "event" in message and message["event"] != "end":
        raise StreamError("invalid_request", f"unknown event {message['event']!r}", CLOSE_UNSUPPORTED, 422)
    return message


def stable_prefix(partials: Sequence[str], agree: int = STABLE_AFTER) -> str:
    """The words the last `agree` partials begin with alike: what later audio no longer moved."""
    if len(partials) < agree:
        return ""
    runs = [p.split() for p in partials[-agree:]]
    words = []
    for column in zip(*runs, strict=False):
        if len(set(column)) > 1:
            break
        words.append(column[0])
    return " ".join(words)


class Endpointer:
    """Says when an utterance has ended: speech heard, then `silence_ms` of silence after it, as
    Silero VAD hears the latest audio. One VAD serves every stream of the process, one at a time."""

    _vad: SileroVAD | None = None
    _lock = threading.Lock()

    def __init__(self, silence_ms: float) -> None:
        self.silence_s = silence_ms / 1000
        self.speech_began = False
        """A VAD window over the threshold: enough for partials, which should start with speech."""
        self.heard_speech = False
        """A whole speech segment (Silero's minimum length): what the endpoint needs first."""

    def ended(self, utterance: Utterance) -> bool:
        """Blocking (a few ms of ONNX on the latest seconds): call it off the event loop."""
        tail_s = min(utterance.duration_s, max(VAD_TAIL_S, 2 * self.silence_s))
        samples = load_audio(utterance.wav(tail_s)).samples
        with Endpointer._lock:
            if Endpointer._vad is None:
                Endpointer._vad = SileroVAD.load()
            vad = Endpointer._vad
            probabilities = vad.probabilities(samples)
        self.speech_began |= bool((probabilities >= vad.options.threshold).any())
        segments = segments_from_probabilities(probabilities, len(samples), vad.options)
        if segments:
            self.heard_speech = True
            silence = len(samples) / SAMPLE_RATE_HZ - segments[-1].end_s
        else:
            silence = tail_s
        return self.heard_speech and silence >= self.silence_s
