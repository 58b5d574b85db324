"""The one exception tree of the recognition library.

Every error a caller can act on derives from `ASRError`. The serving layer maps these classes to
HTTP status codes in exactly one place, and the CLI maps them to exit codes, so raising the most
specific class here is what decides what a user sees.

    ASRError
    ├── AudioError                  the input audio cannot be used (a client error)
    │   ├── EmptyAudioError         zero bytes, or a file with no frames
    │   ├── UndecodableAudioError   not audio, or an unsupported container/codec
    │   │   └── TruncatedAudioError the stream ends before its header says it should
    │   ├── InvalidSamplesError     NaN or Inf samples
    │   ├── UnsupportedSampleRateError  outside the supported 8-48 kHz range
    │   └── ClipTooLongError        longer than the configured maximum
    ├── ModelError                  the recognizer cannot be loaded or run (a server error)
    │   └── ModelLoadError          the directory is missing or is not a CTC checkpoint
    ├── DependencyError             an installed package fails to load (a broken or mismatched install)
    ├── DecoderConfigError          an invalid decoding option (lexicon, LM, hotwords)
    ├── ManifestError               an evaluation manifest is missing, malformed or names no audio
    └── DataError                   a domain pack or training corpus is malformed
"""


class ASRError(Exception):
    """Base class of every error raised on purpose by the `asr` package."""


class AudioError(ASRError):
    """The input audio cannot be used. Always the caller's input, never a bug here."""


class EmptyAudioError(AudioError):
    """The input has no bytes or no frames."""


class UndecodableAudioError(AudioError):
    """The bytes are not audio in a supported format (WAV, FLAC, OGG/Vorbis/Opus, MP3)."""


class TruncatedAudioError(UndecodableAudioError):
    """The stream is cut short: fewer frames decode than its header announces."""


class InvalidSamplesError(AudioError):
    """The decoded samples contain NaN or Inf."""


class UnsupportedSampleRateError(AudioError):
    """The sample rate is outside the supported range."""


class ClipTooLongError(AudioError):
    """The clip is longer than the configured maximum duration."""


class ModelError(ASRError):
    """The recognizer cannot be loaded or run."""


class ModelLoadError(ModelError):
    """The model directory is missing, incomplete, or not a wav2vec2-style CTC checkpoint."""


class DependencyError(ASRError):
    """A package a feature needs is installed but fails to import: a broken or mismatched install,
    cured by reinstalling from the lock, never by the caller's input."""


class DecoderConfigError(ASRError):
    """A decoding option is invalid: unreadable lexicon or LM, or tokens the model lacks."""


class ManifestError(ASRError):
    """An evaluation manifest is missing, malformed, or points at missing audio."""


class DataError(ASRError):
    """A domain pack or corpus is malformed: missing files, bad rows, unknown slots."""
