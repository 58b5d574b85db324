"""A word n-gram language model for beam search, built from plain text in pure Python.

wav2vec2 CTC models spell what they hear letter by letter; a lexicon and an n-gram LM turn a
near miss ("dow", "sevn") into the nearest likely word, which is how wav2vec2 is deployed in
practice (the decoder is flashlight's, `asr.decoding`). KenLM's `lmplz` is not on PyPI, so the
model is estimated here: interpolated absolute discounting (Ney, Essen and Kneser 1994), written
as a standard ARPA file whose backoff weights make the backoff form equal the interpolated one.
At the sizes we build (tens of thousands of sentences) that takes seconds.
"""

import csv
import json
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from asr.errors import DataError
from asr.text import normalize_text

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
LM_WEIGHT, WORD_SCORE = 1.5, 1.0
"""Beam-search weights, tuned for the bundled model: the best mean WER on real dev clips outside the
reported evaluation sample (`scripts/evaluate_models.py --complement`, docs/benchmarks.md)."""
UNIGRAM_FLOOR = 0.01
"""Share of unigram mass spread evenly over the vocabulary, so that no lexicon word is impossible."""


@dataclass(frozen=True)
class LMFiles:
    arpa: Path
    lexicon: Path
    words: int
    sentences: int
    ngrams: tuple[int, ...]


def build_lm(
    sentences: Iterable[str],
    out_dir: Path,
    order: int = 3,
    discount: float = 0.7,
    exclude: Iterable[str] = (),
) -> LMFiles:
    """Write `lm.arpa` and `lexicon.txt` (its words, one per line) for the normalized sentences.

    `exclude`: sentences that must not reach the model (the texts of held-out test sets)."""
    if not 2 <= order <= 5 or not 0 < discount < 1:  # KenLM reads no unigram-only model
        raise DataError("the LM order must be 2-5 and the discount between 0 and 1")
    held_out = {normalize_text(s) for s in exclude}
    counts, used = count_ngrams((t for t in map(normalize_text, sentences) if t not in held_out), order)
    if not used:
        raise DataError("no words to build a language model from")
    probs, backoffs = _estimate(counts, discount)
    out_dir.mkdir(parents=True, exist_ok=True)
    arpa = out_dir / "lm.arpa"
    _write_arpa(arpa, probs, backoffs)
    vocabulary = sorted(w for (w,) in probs[0] if w not in (BOS, EOS, UNK))
    lexicon = out_dir / "lexicon.txt"
    lexicon.write_text("\n".join(vocabulary) + "\n", encoding="utf-8")
    return LMFiles(arpa, lexicon, len(vocabulary), used, tuple(len(p) for p in probs))


def count_ngrams(texts: Iterable[str], order: int) -> tuple[list[Counter[tuple[str, ...]]], int]:
    """Counts of every n-gram up to `order` of already normalized texts, and how many had words."""
    counts: list[Counter[tuple[str, ...]]] = [Counter() for _ in range(order)]
    used = 0
    for text in texts:
        words = text.split()
        if not words:
            continue
        used += 1
        padded = [BOS, *words, EOS]
        for n in range(1, order + 1):
            for i in range(1 if n == 1 else 0, len(padded) - n + 1):  # <s> is a context, not a word
                counts[n - 1][tuple(padded[i : i + n])] += 1
    return counts, used


def _estimate(
    counts: list[Counter[tuple[str, ...]]], discount: float
) -> tuple[list[dict[tuple[str, ...], float]], list[dict[tuple[str, ...], float]]]:
    """Probabilities of every seen n-gram and the backoff weight of every context, order by order."""
    unigrams = counts[0]
    vocabulary = [w for (w,) in unigrams] + [UNK]
    total = sum(unigrams.values())
    uniform = UNIGRAM_FLOOR / len(vocabulary)
    probs: list[dict[tuple[str, ...], float]] = [
        {(w,): (1 - UNIGRAM_FLOOR) * unigrams[(w,)] / total + uniform for w in vocabulary}
    ]
    backoffs: list[dict[tuple[str, ...], float]] = []
    for grams in counts[1:]:
        history_total: Counter[tuple[str, ...]] = Counter()
        followers: Counter[tuple[str, ...]] = Counter()
        for gram, c in grams.items():
            history_total[gram[:-1]] += c
            followers[gram[:-1]] += 1
        # gamma(h) = D * N1+(h .) / c(h): the mass that discounting frees, spread by the order below.
        # It is also the ARPA backoff weight, since an unseen word gets gamma(h) * p_lower too.
        gamma = {h: discount * followers[h] / c for h, c in history_total.items()}
        backoffs.append(gamma)
        probs.append(
            {
                gram: (c - discount) / history_total[gram[:-1]]
                + gamma[gram[:-1]] * backoff_prob(probs, backoffs, gram[1:])
                for gram, c in grams.items()
            }
        )
    probs[0][(BOS,)] = 0.0  # a context, never predicted: ARPA writes it as -99
    return probs, backoffs


def backoff_prob(
    probs: list[dict[tuple[str, ...], float]],
    backoffs: list[dict[tuple[str, ...], float]],
    gram: tuple[str, ...],
) -> float:
    """p(last word | the words before it), read as KenLM reads the ARPA file: back off when unseen."""
    if gram in probs[len(gram) - 1]:
        return probs[len(gram) - 1][gram]
    if len(gram) == 1:
        return probs[0][(UNK,)]
    return backoffs[len(gram) - 2].get(gram[:-1], 1.0) * backoff_prob(probs, backoffs, gram[1:])


def _write_arpa(
    path: Path, probs: list[dict[tuple[str, ...], float]], backoffs: list[dict[tuple[str, ...], float]]
) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write("\\data\\\n")
        for n, table in enumerate(probs, 1):
            f.write(f"ngram {n}={len(table)}\n")
        for n, table in enumerate(probs, 1):
            f.write(f"\n\\{n}-grams:\n")
            gammas = backoffs[n - 1] if n - 1 < len(backoffs) else {}
            for gram, p in table.items():
                logp = math.log10(p) if p > 0 else -99.0
                line = f"{logp:.6f}\t{' '.join(gram)}"
                if gram in gammas:
                    line += f"\t{math.log10(gammas[gram]):.6f}"
                f.write(line + "\n")
        f.write("\n\\end\\\n")
    tmp.replace(path)


def corpus_sentences(paths: Iterable[Path]) -> list[str]:
    """Sentences from JSONL manifests (`text`), TSV files with a `text` column, or plain text lines."""
    sentences: list[str] = []
    for path in paths:
        try:
            with path.open(encoding="utf-8", newline="") as f:
                if path.suffix == ".jsonl":
                    sentences += [json.loads(line).get("text", "") for line in f if line.strip()]
                elif path.suffix == ".tsv":
                    sentences += [
                        row.get("text") or ""
                        for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
                    ]
                else:
                    sentences += f.read().splitlines()
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"cannot read sentences from {path}: {e}") from e
    return [s for s in sentences if isinstance(s, str) and s.strip()]
