"""The only orchestrator: audio in, transcript out, as a short list of named, timed stages.

    decode -> preprocess -> vad -> asr (acoustic model, in batches) -> decoding -> assemble

Long recordings are cut by the VAD into segments of at most `max_segment_s` and recognized
`batch_size` segments at a time, so the model's memory depends on the segment size, not on the
file's length. Times in the result are on the caller's timeline (seconds from the file's start).
"""

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from asr.audio import AudioLimits, Samples, load_audio
from asr.decoding import (
    BeamDecoder,
    BeamOptions,
    Decoder,
    GreedyDecoder,
    Hypothesis,
    SpottingDecoder,
    WordSpan,
)
from asr.errors import AudioError
from asr.model import AcousticModel, Device, Recognizer
from asr.preprocess import ClipStats, Preprocessed, PreprocessOptions, preprocess
from asr.spotting import PhraseSpotter, Spot, SpotOptions, best_spots
from asr.vad import SileroVAD, SpeechSegment, VADOptions, VoiceActivityDetector, WholeClipVAD

_Work = tuple[Samples, SpeechSegment]
"""A span of speech and the clip it is in: one unit of model work."""

STAGES = ("decode", "preprocess", "vad", "asr", "decoding")
"""Pipeline stages in order; monitoring labels latency with these names."""


@dataclass(frozen=True)
class PipelineOptions:
    """How a clip goes through the pipeline; `batch_size` segments share one model call."""

    limits: AudioLimits = field(default_factory=AudioLimits)
    preprocess: PreprocessOptions = field(default_factory=PreprocessOptions)
    batch_size: int = 8
    max_batch_audio_s: float = 10.0
    """Padded audio per model call (segments x longest segment). The feature encoder's activations
    grow with it (its first layers run at 3.2 kHz with hundreds of channels): a 19 s batch of the
    small model measured about +380 MB of RSS, a 10 s one about +190 MB. Bounding it makes a
    10-minute file peak like a 10 s one."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if self.max_batch_audio_s <= 0:
            raise ValueError("max_batch_audio_s must be positive")


@dataclass(frozen=True)
class Segment:
    """One recognized speech segment; times in seconds from the start of the input."""

    start_s: float
    end_s: float
    text: str
    confidence: float
    words: tuple[WordSpan, ...]


@dataclass(frozen=True)
class Transcript:
    """The result for one input.

    `no_speech` is set when nothing was recognized (silence, noise, or all-zero input);
    `missing_audio` when the input was digital silence, which usually means a muted microphone.
    `timings_s` holds the wall time of each stage in `STAGES`.
    """

    text: str
    confidence: float
    segments: tuple[Segment, ...]
    duration_s: float
    stats: ClipStats
    no_speech: bool
    missing_audio: bool
    model_version: str
    timings_s: dict[str, float]
    source_sample_rate_hz: int
    """The input's own sample rate, before resampling to 16 kHz."""
    spots: tuple[Spot, ...] = ()
    """Catalog phrases spotted in the speech, best first (empty unless the pipeline spots)."""


class _StageClock:
    """Accumulates wall time per stage; a stage may run several times (once per batch)."""

    def __init__(self) -> None:
        self.totals = dict.fromkeys(STAGES, 0.0)

    @contextmanager
    def measure(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.totals[stage] += time.perf_counter() - started


class Frontend:
    """The pipeline's front half (decode, preprocess, VAD) without a model: what a device runs
    before it sends only the speech onward (`serving.client.CloudClient`)."""

    def __init__(self, vad: VoiceActivityDetector, options: PipelineOptions | None = None) -> None:
        self.vad = vad
        self.options = options or PipelineOptions()

    def speech(
        self, source: str | Path | bytes
    ) -> tuple[Preprocessed, list[SpeechSegment], dict[str, float]]:
        """The prepared clip, its speech spans and the stages' seconds."""
        clock = _StageClock()
        clip, spans, _ = self.prepare(source, clock)
        return clip, spans, dict(clock.totals)

    def prepare(
        self, source: str | Path | bytes, clock: _StageClock
    ) -> tuple[Preprocessed, list[SpeechSegment], int]:
        """The prepared clip, its speech spans and the source's sample rate, timed on `clock`."""
        prepared = self.prepare_many([source], [clock])[0]
        if isinstance(prepared, AudioError):
            raise prepared
        return prepared.clip, prepared.spans, prepared.source_rate_hz

    def prepare_many(
        self, sources: Sequence[str | Path | bytes], clocks: Sequence[_StageClock] | None = None
    ) -> list["Prepared | AudioError"]:
        """Several inputs decoded and preprocessed one by one, then their speech found in one VAD
        batch (the batch's VAD time is each input's, since each waited for all of it)."""
        clocks = clocks or [_StageClock() for _ in sources]
        decoded: list[tuple[Preprocessed, int] | AudioError] = []
        for source, clock in zip(sources, clocks, strict=True):
            try:
                with clock.measure("decode"):
                    audio = load_audio(source, self.options.limits)
                with clock.measure("preprocess"):
                    clip = preprocess(audio.samples, audio.clipping_ratio, self.options.preprocess)
                decoded.append((clip, audio.source_sample_rate_hz))
            except AudioError as e:
                decoded.append(e)
        heard = [d[0] for d in decoded if not isinstance(d, AudioError) and not d[0].stats.is_all_zero]
        started = time.perf_counter()
        spans = iter(self.vad.detect_many([clip.samples for clip in heard]))
        vad_s = time.perf_counter() - started
        results: list[Prepared | AudioError] = []
        for item, clock in zip(decoded, clocks, strict=True):
            if isinstance(item, AudioError):
                results.append(item)
                continue
            clip, rate = item
            clock.totals["vad"] += vad_s
            results.append(Prepared(clip, [] if clip.stats.is_all_zero else next(spans), rate, clock))
        return results


@dataclass(frozen=True)
class Prepared:
    """One input after the front half: the clip, its speech spans, its source rate, its timings."""

    clip: Preprocessed
    spans: list[SpeechSegment]
    source_rate_hz: int
    clock: _StageClock


class Pipeline:
    """Recognizes audio files or bytes with one recognizer, decoder and VAD. Not thread-safe."""

    def __init__(
        self,
        recognizer: AcousticModel,
        decoder: Decoder,
        vad: VoiceActivityDetector,
        options: PipelineOptions | None = None,
    ) -> None:
        self.recognizer = recognizer
        self.decoder = decoder
        self.front = Frontend(vad, options)

    @property
    def options(self) -> PipelineOptions:
        return self.front.options

    def transcribe(self, source: str | Path | bytes) -> Transcript:
        """Run every stage on one input. Raises `AudioError` subclasses for unusable input."""
        result = self.transcribe_many([source])[0]
        if isinstance(result, AudioError):
            raise result
        return result

    def transcribe_many(self, sources: Sequence[str | Path | bytes]) -> list[Transcript | AudioError]:
        """Several inputs at once, their speech recognized in shared model batches (the server's
        micro-batching). Each result is a transcript or the `AudioError` that input raised; the
        shared stages' time is reported in full to every input, since each waited for all of it."""
        return self.recognize_prepared(self.prepare_many(sources))

    def prepare_many(self, sources: Sequence[str | Path | bytes]) -> list["Prepared | AudioError"]:
        """The front half (decode, preprocess, VAD) of inputs, each a `Prepared` or the
        `AudioError` it raised: the server runs it on its own thread while the model recognizes
        the previous batch."""
        return self.front.prepare_many(sources)

    def recognize_prepared(
        self, prepared: Sequence["Prepared | AudioError"]
    ) -> list[Transcript | AudioError]:
        """The back half (model, decoding, assembly) of prepared inputs, in shared batches."""
        ready = [p for p in prepared if not isinstance(p, AudioError)]
        shared = _StageClock()
        work = [(p.clip.samples, span) for p in ready for span in p.spans]
        hypotheses = iter(self._recognize(work, shared))
        results: list[Transcript | AudioError] = []
        for item in prepared:
            if isinstance(item, AudioError):
                results.append(item)
                continue
            clip, spans, rate, clock = item.clip, item.spans, item.source_rate_hz, item.clock
            hyps = [next(hypotheses) for _ in spans]
            placed = (_place(span, hyp, clip.offset_s) for span, hyp in zip(spans, hyps, strict=True))
            segments = tuple(s for s in placed if s.text)
            for stage in ("asr", "decoding"):
                clock.totals[stage] = shared.totals[stage]
            spots = best_spots([h.spots for h in hyps])
            version = self.recognizer.version
            results.append(_assemble(segments, spots, clip.stats, version, clock.totals, rate))
        return results

    def _recognize(self, work: Sequence[_Work], clock: _StageClock) -> list[Hypothesis]:
        """Hypotheses for (clip, span) pairs, in order, batched by count and padded length."""
        hypotheses: list[Hypothesis] = []
        for batch in _batched(work, self.options.batch_size, self.options.max_batch_audio_s):
            with clock.measure("asr"):
                emissions = self.recognizer.log_probs([span.slice(samples) for samples, span in batch])
            with clock.measure("decoding"):
                hypotheses.extend(self.decoder.decode(e) for e in emissions)
        return hypotheses


def _batched(work: Sequence[_Work], size: int, max_audio_s: float) -> Iterator[list[_Work]]:
    """Consecutive groups of at most `size` spans whose padded length (count x longest) stays
    within `max_audio_s`; a longer span still goes alone."""
    batch: list[_Work] = []
    for item in work:
        longest = max([item[1].duration_s, *(s.duration_s for _, s in batch)])
        if batch and (len(batch) == size or (len(batch) + 1) * longest > max_audio_s):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def _place(span: SpeechSegment, hyp: Hypothesis, offset_s: float) -> Segment:
    """Shift a segment's hypothesis from segment time to the input's timeline."""
    shift = offset_s + span.start_s
    words = tuple(
        WordSpan(w.word, round(w.start_s + shift, 3), round(w.end_s + shift, 3), w.confidence)
        for w in hyp.words
    )
    return Segment(
        round(offset_s + span.start_s, 3), round(offset_s + span.end_s, 3), hyp.text, hyp.confidence, words
    )


def _assemble(
    segments: tuple[Segment, ...],
    spots: tuple[Spot, ...],
    stats: ClipStats,
    model_version: str,
    timings_s: dict[str, float],
    source_sample_rate_hz: int,
) -> Transcript:
    words = [w for s in segments for w in s.words]
    # Utterance confidence weighs each segment by its word count: long segments say more.
    confidence = sum(s.confidence * len(s.words) for s in segments) / len(words) if words else 0.0
    return Transcript(
        text=" ".join(s.text for s in segments),
        confidence=confidence,
        segments=segments,
        duration_s=stats.duration_s,
        stats=stats,
        no_speech=not segments,
        missing_audio=stats.is_all_zero,
        model_version=model_version,
        timings_s=dict(timings_s),
        source_sample_rate_hz=source_sample_rate_hz,
        spots=spots,
    )


def load_recognizer(model_dir: Path, device: Device = "auto", threads: int | None = None) -> AcousticModel:
    """A Hugging Face CTC checkpoint on torch, or an edge folder (`model.onnx`) on ONNX Runtime
    (with `threads` intra-op threads; torch's are process-wide, set by the caller)."""
    from asr.edge import OnnxRecognizer, is_edge_folder

    if is_edge_folder(model_dir):
        return OnnxRecognizer(model_dir, threads)
    return Recognizer.from_pretrained(model_dir, device)


def build_pipeline(
    model_dir: str | Path,
    *,
    device: Device = "auto",
    use_vad: bool = True,
    beam: BeamOptions | None = None,
    options: PipelineOptions | None = None,
    vad_options: VADOptions | None = None,
    threads: int | None = None,
    spotting: SpotOptions | None = None,
) -> Pipeline:
    """Assemble the standard pipeline: a local checkpoint, greedy or beam decoding, Silero or no VAD,
    and with `spotting` the catalog phrases found in each input."""
    recognizer = load_recognizer(Path(model_dir), device, threads)
    decoder: Decoder = (
        GreedyDecoder(recognizer.vocab) if beam is None else BeamDecoder(recognizer.vocab, beam)
    )
    if spotting is not None:
        decoder = SpottingDecoder(decoder, PhraseSpotter(recognizer.vocab, spotting))
    return Pipeline(recognizer, decoder, _vad(use_vad, vad_options), options)


def build_frontend(
    use_vad: bool = True, vad_options: VADOptions | None = None, options: PipelineOptions | None = None
) -> Frontend:
    """The front half alone, with Silero or no VAD; it loads no model."""
    return Frontend(_vad(use_vad, vad_options), options)


def _vad(use_vad: bool, options: VADOptions | None) -> VoiceActivityDetector:
    options = options or VADOptions()
    return SileroVAD.load(options) if use_vad else WholeClipVAD(options.max_segment_s)
