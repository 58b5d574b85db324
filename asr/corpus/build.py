"""The corpus builder: texts x voices x conditions -> FLAC clips and manifests.

Text comes from three sources: queries expanded from a domain pack, general English sentences
(LJ Speech transcripts), and isolated words (digits, digit strings, command words). Each text is
voiced by a TTS voice with its rate and pitch varied, then augmented (noise, reverb, gain, edge
silence, narrow band) unless drawn as a clean clip.

Splits hold out whole voices and whole texts: a test clip's voice and text never occur in
training. The plan is a pure function of the config (seeded), and rendering skips clips already
on disk, so an interrupted build resumes where it stopped and reproduces the same corpus.
"""

import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from asr.audio import SAMPLE_RATE_HZ, Samples
from asr.corpus.augment import AugmentSpec, apply, draw_spec
from asr.corpus.domain import DomainPack
from asr.corpus.real import noise_split, stable_hash
from asr.corpus.tts import Engine, SynthesisError, Voice, all_engines
from asr.errors import DataError
from asr.preprocess import PreprocessOptions, normalization_gain_db
from asr.text import normalize_text

logger = logging.getLogger(__name__)

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
COMMANDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
"""The ten Speech Commands words, so the model is evaluated on words it was taught."""
HELD_OUT_VOICES = ("espeak:en-gb-scotland", "espeak:en-us-nyc", "flite:rms", "festival:ked_diphone")
"""Voice-id prefixes kept for the test split only."""
ENGINE_SHARE = {"espeak": 0.45, "flite": 0.2, "festival": 0.1, "hibari": 0.25}
"""How often each engine voices a training clip: espeak has the most voices, hibari sounds most human."""
CLEAN_LEVEL = PreprocessOptions(target_dbfs=-23.0, max_gain_db=40.0)
"""TTS engines differ by 20 dB in output level; clean clips are levelled before augmentation."""


@dataclass(frozen=True)
class CorpusConfig:
    out_dir: Path
    domain_dir: Path
    sentences_tsv: Path | None = None
    noise_manifest: Path | None = None
    """A manifest whose empty-text rows are background-noise recordings (Speech Commands' `_silence_`)."""
    seed: int = 0
    queries: int = 3000
    sentences: int = 1500
    words: int = 1500
    clean_fraction: float = 0.4
    test_text_fraction: float = 0.1
    dev_text_fraction: float = 0.05
    max_sentence_words: int = 12
    engines: tuple[str, ...] = ("espeak", "flite", "festival", "hibari")
    workers: int = 2


@dataclass(frozen=True)
class PlannedClip:
    id: str
    text: str
    source: str
    split: str
    voice: Voice
    augment: AugmentSpec
    tags: dict[str, str] = field(default_factory=dict)


def _texts(config: CorpusConfig, rng: np.random.Generator) -> list[tuple[str, str, dict[str, str]]]:
    """(normalized text, source, tags) for every text of the corpus, deduplicated."""
    pack = DomainPack.load(config.domain_dir)
    texts = [
        # `entries`: the catalog ids the query names, so search success can be scored.
        (q.text, "query", {"intent": q.intent, "domain": pack.name, "entries": ",".join(q.entry_ids)})
        for q in pack.expand(config.queries, config.seed)
    ]
    if config.sentences and config.sentences_tsv:
        lines = config.sentences_tsv.read_text(encoding="utf-8").splitlines()[1:]
        candidates = [normalize_text(line.split("\t", 1)[-1]) for line in lines]
        short = sorted({c for c in candidates if 2 <= len(c.split()) <= config.max_sentence_words})
        picked = rng.choice(len(short), size=min(config.sentences, len(short)), replace=False)
        texts += [(short[i], "sentence", {}) for i in sorted(picked)]
    words = list(DIGITS + COMMANDS + tuple(normalize_text(w) for w in pack.extra_words))
    for _ in range(config.words):
        if rng.random() < 0.5:
            texts.append((str(rng.choice(words)), "word", {}))
        else:
            digits = rng.choice(DIGITS, size=int(rng.integers(2, 5)))
            texts.append((" ".join(digits), "digits", {}))
    # Sentences and queries are voiced once each; isolated words recur, each time a new voice.
    seen: set[str] = set()
    unique = []
    for text, source, tags in texts:
        if source == "word" or text not in seen:
            seen.add(text)
            unique.append((text, source, tags))
    return unique


def _voices(engines: dict[str, Engine], config: CorpusConfig) -> dict[str, list[str]]:
    out = {}
    for name in config.engines:
        engine = engines.get(name)
        if engine is None or not engine.available():
            raise DataError(f"TTS engine {name!r} is not installed (see the Makefile's Debian packages)")
        out[name] = engine.voice_names()
    return out


def _split(hashed: int, config: CorpusConfig) -> str:
    u = (hashed % 1_000_000) / 1_000_000
    return (
        "test"
        if u < config.test_text_fraction
        else "dev"
        if u < config.test_text_fraction + config.dev_text_fraction
        else "train"
    )


def _is_held_out(voice_id: str) -> bool:
    return voice_id.startswith(HELD_OUT_VOICES)


def plan_corpus(
    config: CorpusConfig, engines: dict[str, Engine] | None = None, noise_names: Sequence[str] = ()
) -> list[PlannedClip]:
    """The whole corpus as data: one entry per clip, a pure function of the config."""
    rng = np.random.default_rng(config.seed)
    voices = _voices(engines or all_engines(), config)
    texts = _texts(config, rng)
    shares = np.array([ENGINE_SHARE.get(e, 0.1) for e in config.engines])
    shares /= shares.sum()
    plan = []
    for index, (text, source, tags) in enumerate(texts):
        # Whole texts are held out (a test sentence is never trained on), except isolated words,
        # which every split needs: those are held out by voice alone.
        key = f"{text}#{index}" if source == "word" else text
        split = _split(stable_hash(config.seed, "split", key), config)
        clip_rng = np.random.default_rng(stable_hash(config.seed, key))
        for _ in range(100):  # draw until the voice's split matches the text's split
            engine = str(clip_rng.choice(config.engines, p=shares))
            voice_id = f"{engine}:{clip_rng.choice(voices[engine])}"
            if _is_held_out(voice_id) == (split == "test"):
                break
        voice = Voice(engine, voice_id.split(":", 1)[1], rate=round(float(clip_rng.uniform(0.85, 1.2)), 2),
                      pitch=round(float(clip_rng.uniform(0.8, 1.25)), 2))  # fmt: skip
        augment = draw_spec(clip_rng, noise_names, clean=bool(clip_rng.random() < config.clean_fraction))
        clip_id = hashlib.sha1(f"{config.seed}/{key}".encode()).hexdigest()[:14]
        plan.append(PlannedClip(clip_id, text, source, split, voice, augment, tags))
    return plan


def noise_rows(manifest: Path | None, split: str = "train") -> list[str]:
    """Audio paths (relative to `manifest`) of its background-noise recordings: the empty-text rows
    in the `split` half (by a stable hash of the name), so the other half stays unseen for
    measuring false speech on silence."""
    if manifest is None:
        return []
    rows = (json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines())
    return [r["audio"] for r in rows if r.get("text") == "" and noise_split(Path(r["audio"]).name) == split]


def load_noise_bank(manifest: Path | None, split: str = "train") -> dict[str, Samples]:
    """The recordings of `noise_rows` as 16 kHz float32, named by file stem."""
    if manifest is None:
        return {}
    bank = {}
    for audio in noise_rows(manifest, split):
        data, rate = sf.read(manifest.parent / audio, dtype="float32", always_2d=True)
        bank[Path(audio).stem] = soxr.resample(data.mean(axis=1), rate, SAMPLE_RATE_HZ).astype(np.float32)
    return bank


def level_and_augment(
    samples: Samples,
    rate: int,
    spec: AugmentSpec,
    rng: np.random.Generator,
    noise_bank: dict[str, Samples] | None,
) -> Samples:
    """Synthesized speech as the corpus holds it: 16 kHz, levelled to the clean level, augmented."""
    clean = (
        soxr.resample(samples, rate, SAMPLE_RATE_HZ).astype(np.float32) if rate != SAMPLE_RATE_HZ else samples
    )
    clean = (clean * 10 ** (normalization_gain_db(clean, CLEAN_LEVEL) / 20)).astype(np.float32)
    return apply(clean, spec, rng, noise_bank)


def render_clip(
    clip: PlannedClip, out_dir: Path, engines: dict[str, Engine], noise_bank: dict[str, Samples], seed: int
) -> dict[str, Any]:
    """Synthesize, level, augment and write one clip (skipped if on disk); returns its manifest row."""
    path = out_dir / "audio" / f"{clip.id}.flac"
    if not path.exists():
        samples, rate = engines[clip.voice.engine].synthesize(clip.text, clip.voice)
        rng = np.random.default_rng(stable_hash(seed, clip.id))
        audio = level_and_augment(samples, rate, clip.augment, rng, noise_bank)
        tmp = path.with_suffix(".tmp.flac")
        sf.write(tmp, audio, SAMPLE_RATE_HZ, subtype="PCM_16")
        tmp.replace(path)  # atomic: an interrupted build never leaves half a clip
    info = sf.info(path)
    a = clip.augment
    return {
        "audio": f"audio/{clip.id}.flac", "text": clip.text, "sample_rate": SAMPLE_RATE_HZ,
        "duration_s": round(info.frames / info.samplerate, 3), "speaker": clip.voice.id, "split": clip.split,
        "source": clip.source, "engine": clip.voice.engine, "voice": clip.voice.id, "rate": clip.voice.rate,
        "pitch": clip.voice.pitch, "noise": a.noise, "snr_db": a.snr_db, "reverb_rt60_s": a.reverb_rt60_s,
        "gain_db": a.gain_db, "narrowband": a.narrowband, "clean": a.is_clean, **clip.tags,
    }  # fmt: skip


_WORKER: dict[str, Any] = {}


def _init_worker(config: CorpusConfig) -> None:
    _WORKER["engines"] = all_engines()
    _WORKER["noise"] = load_noise_bank(config.noise_manifest)
    _WORKER["config"] = config


def _render_in_worker(clip: PlannedClip) -> dict[str, Any] | str:
    config: CorpusConfig = _WORKER["config"]
    try:
        return render_clip(clip, config.out_dir, _WORKER["engines"], _WORKER["noise"], config.seed)
    except SynthesisError as e:
        return f"{clip.id}: {e}"


def build_corpus(
    config: CorpusConfig, progress: Callable[[Iterator[Any], int], Iterator[Any]] | None = None
) -> dict[str, int]:
    """Plan and render the corpus, then write train/dev/test manifests. Returns clips per split."""
    (config.out_dir / "audio").mkdir(parents=True, exist_ok=True)
    noise_names = sorted(Path(a).stem for a in noise_rows(config.noise_manifest))
    plan = plan_corpus(config, noise_names=noise_names)
    (config.out_dir / "config.json").write_text(
        json.dumps({k: str(v) for k, v in asdict(config).items()}, indent=1)
    )
    rows: list[dict[str, Any]] = []
    failures: list[str] = []
    with ProcessPoolExecutor(config.workers, initializer=_init_worker, initargs=(config,)) as pool:
        results: Iterator[Any] = pool.map(_render_in_worker, plan, chunksize=8)
        for result in progress(results, len(plan)) if progress else results:
            (failures.append if isinstance(result, str) else rows.append)(result)
    for failure in failures:
        logger.warning("skipped clip %s", failure)
    counts = {}
    for split in ("train", "dev", "test"):
        chosen = [r for r in rows if r["split"] == split]
        with (config.out_dir / f"{split}.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in chosen)
        counts[split] = len(chosen)
    counts["failed"] = len(failures)
    return counts
