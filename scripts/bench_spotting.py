"""Voice search by spotted catalog names vs by the transcript: how often the intended entry is first.

    .venv/bin/python scripts/bench_spotting.py --split dev --char-bonus 1 2 3 4 --min-match 0 0.12 0.15 0.2
    .venv/bin/python scripts/bench_spotting.py --split dev --carrier-floor none 0.25 0.35 0.5
    .venv/bin/python scripts/bench_spotting.py --split test      # the shipped settings, held out

Runs the served recognition (bundled model, Silero VAD, catalog-biased beam search) once on each of
the corpus's synthetic voice queries (`source=query`, voices held out of training) and on
out-of-domain sentences (`source=sentence`, which name no catalog entry), keeping each clip's
emissions. Then, for every `--char-bonus`, `--carrier-floor` (`none`: no carrier words closed)
and `--min-match`, it ranks the catalog by the names
spotted in those emissions (`asr.spotting`, `CatalogIndex.search_spoken`) and reports, beside the
transcript search the service used before (`CatalogIndex.search`): the share of queries whose
intended entry is first and in the top 5, and the share of sentences that got any hit (lower is
better: a sentence names no place). Tune on dev; report test once.
"""

import argparse
import itertools
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from asr.corpus.domain import DomainPack
from asr.errors import AudioError
from asr.model import Emissions
from asr.pipeline import Pipeline, build_pipeline
from asr.spotting import PhraseSpotter, Spot, best_spots
from serving.search import CatalogIndex, SearchOptions, SearchResult
from serving.settings import DEFAULT_DOMAIN_DIR, DEFAULT_MODEL_DIR, REPO_ROOT, Settings


@dataclass(frozen=True)
class Heard:
    """One clip after recognition: what search gets."""

    text: str
    wanted: frozenset[str]
    """The intended entries' ids (empty for a sentence)."""
    emissions: tuple[Emissions, ...]


def recognize(pipeline: Pipeline, rows: list[dict[str, str]], corpus: Path) -> list[Heard]:
    heard = []
    for row in rows:
        (prepared,) = pipeline.prepare_many([corpus / row["audio"]])
        spans = (
            []
            if isinstance(prepared, AudioError)
            else [s.slice(prepared.clip.samples) for s in prepared.spans]
        )
        emissions = tuple(pipeline.recognizer.log_probs(spans)) if spans else ()
        text = " ".join(pipeline.decoder.decode(e).text for e in emissions).strip()
        wanted = frozenset(row.get("entries", "").split(",")) - {""}
        heard.append(Heard(text, wanted, emissions))
    return heard


def rates(results: list[SearchResult], heard: list[Heard]) -> dict[str, float]:
    ranks = [
        next((i + 1 for i, hit in enumerate(r.hits) if hit.entry.id in h.wanted), None)
        for r, h in zip(results, heard, strict=True)
    ]
    return {
        "top1": round(float(np.mean([r == 1 for r in ranks])), 4),
        "top5": round(float(np.mean([r is not None and r <= 5 for r in ranks])), 4),
    }


def hit_share(results: list[SearchResult]) -> float:
    return round(float(np.mean([r.found for r in results])), 4)


def spots_of(spotter: PhraseSpotter, heard: list[Heard]) -> list[tuple[Spot, ...]]:
    return [best_spots([spotter.spot(e) for e in h.emissions]) for h in heard]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--split", default="test", choices=("dev", "test"))
    parser.add_argument("--corpus", type=Path, default=REPO_ROOT / "corpus")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    settings = Settings()
    parser.add_argument("--char-bonus", type=float, nargs="+", default=[settings.spot_char_bonus])
    parser.add_argument("--min-match", type=float, nargs="+", default=[settings.search_min_match])
    parser.add_argument(
        "--carrier-floor",
        type=lambda v: None if v == "none" else float(v),
        nargs="+",
        default=[settings.spot_carrier_floor],
    )
    parser.add_argument("--sentences", type=int, default=150, help="out-of-domain sentences (0: none)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    manifest = args.corpus / f"{args.split}.jsonl"
    if not manifest.is_file():
        print(
            f"bench_spotting: no {manifest}; build the corpus first (voice-search corpus build)",
            file=sys.stderr,
        )
        return 2
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    pack = DomainPack.load(DEFAULT_DOMAIN_DIR)
    pipeline = build_pipeline(
        args.model, device="cpu", beam=pack.bias(settings.beam_size, settings.hotword_weight)
    )
    started = time.perf_counter()
    queries = recognize(pipeline, [r for r in rows if r.get("source") == "query"], args.corpus)
    sentences = recognize(
        pipeline, [r for r in rows if r.get("source") == "sentence"][: args.sentences], args.corpus
    )
    recognized_s = time.perf_counter() - started

    index = CatalogIndex(pack)
    vocab = pipeline.recognizer.vocab
    out: dict[str, object] = {
        "date": time.strftime("%Y-%m-%d"),
        "split": args.split,
        "model": str(args.model),
        "queries": len(queries),
        "sentences": len(sentences),
        "recognition_s": round(recognized_s, 1),
        "transcript": rates([index.search(h.text) for h in queries], queries)
        | {"sentences_with_hits": hit_share([index.search(h.text) for h in sentences])},
        "spotting": [],
    }
    print(json.dumps({k: v for k, v in out.items() if k != "spotting"}), flush=True)
    for bonus, carrier_floor in itertools.product(args.char_bonus, args.carrier_floor):
        options = pack.spotting(bonus, carrier_floor or 0.0)
        spotter = PhraseSpotter(
            vocab, options if carrier_floor is not None else replace(options, carriers=())
        )
        clock = time.process_time()
        query_spots = spots_of(spotter, queries)
        cpu_ms = 1000 * (time.process_time() - clock) / max(1, len(queries))
        sentence_spots = spots_of(spotter, sentences)
        for floor in args.min_match:
            spoken = CatalogIndex(pack, SearchOptions(min_match=floor))
            found = [spoken.search_spoken(h.text, s) for h, s in zip(queries, query_spots, strict=True)]
            wrong = [spoken.search_spoken(h.text, s) for h, s in zip(sentences, sentence_spots, strict=True)]
            row = {"char_bonus": bonus, "carrier_floor": carrier_floor, "min_match": floor}
            row["spot_cpu_ms_per_query"] = round(cpu_ms, 1)
            row |= rates(found, queries) | {"sentences_with_hits": hit_share(wrong)}
            out["spotting"].append(row)  # type: ignore[attr-defined]
            print(json.dumps(row), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
