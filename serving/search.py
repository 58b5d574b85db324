"""Catalog search that tolerates recognition errors.

A transcript such as "wether in pariss" should still find Paris. The query is cut into word
n-grams (skipping n-grams made only of the domain's carrier words such as "weather in"), and each
n-gram is compared with every catalog name twice: by spelling (rapidfuzz's normalized
Levenshtein ratio) and by sound (the same ratio over Metaphone keys, via jellyfish), because ASR
errors are mostly sound-alike spellings. An entry's score is its best name's best n-gram, in [0, 1].

A voice query whose pipeline spotted catalog names in the audio (`asr.spotting`) is ranked by
those spots instead: the acoustic evidence for each name, which a weak model's 1-best transcript
throws away. On 396 held-out-voice test queries this found the intended entry first for 34.6%
against 12.1% by the transcript (docs/benchmarks.md, "Spotting catalog names").
"""

from collections.abc import Sequence
from dataclasses import dataclass

import jellyfish
import numpy as np
from rapidfuzz import fuzz, process

from asr.corpus.domain import CatalogEntry, DomainPack
from asr.spotting import Spot
from asr.text import normalize_text


@dataclass(frozen=True)
class SearchOptions:
    limit: int = 5
    min_score: float = 0.72
    """Below this nothing counts as found. Chosen on the places pack: a one-letter slip in a
    five-letter name scores ~0.8; unrelated names of similar length score under 0.6."""
    spelling_weight: float = 0.6
    """Share of the score from spelling; the rest comes from sound (Metaphone)."""
    min_match: float = 0.12
    """A spotted name below this per-character likelihood ratio (`Spot.match`) counts as not
    found. Chosen with `SpotOptions.char_bonus` on dev clips with the bundled model, carrier words
    closed: 0.12 (at a bonus of 4.0) kept 77.8% of 207 queries' intended entries first and left
    55% of 122 out-of-domain sentences with a hit (0.13 at 3.5: 74.9% and 69%; typed-style search
    of their transcripts: 51.2% and 81%). docs/benchmarks.md, "Spotting catalog names"."""

    def __post_init__(self) -> None:
        scores = (self.min_score, self.spelling_weight, self.min_match)
        if self.limit < 1 or not all(0 <= s <= 1 for s in scores):
            raise ValueError("limit >= 1; min_score, spelling_weight and min_match in [0, 1]")


@dataclass(frozen=True)
class SearchHit:
    entry: CatalogEntry
    score: float
    """In [0, 1]: text similarity, or for a spotted name its per-character likelihood ratio."""
    matched: str
    """The catalog name (title or alias) that matched."""


@dataclass(frozen=True)
class SearchResult:
    query: str
    """The normalized query that was searched."""
    hits: tuple[SearchHit, ...]

    @property
    def found(self) -> bool:
        return bool(self.hits)


class CatalogIndex:
    """Fuzzy and phonetic search over a domain pack's catalog names. Thread-safe (read-only)."""

    def __init__(self, pack: DomainPack, options: SearchOptions | None = None) -> None:
        self.pack = pack
        self.options = options or SearchOptions()
        self._names: list[str] = []
        self._owners: list[int] = []
        self._owners_of: dict[str, list[int]] = {}
        """Every entry a name belongs to ("hong kong": the city and the region), for spotted names."""
        for index, entry in enumerate(pack.catalog):
            for name in dict.fromkeys(normalize_text(n) for n in entry.names):
                if name:
                    self._names.append(name)
                    self._owners.append(index)
                    self._owners_of.setdefault(name, []).append(index)
        self._sounds = [_sound(n) for n in self._names]
        self._name_words = np.array([len(n.split()) for n in self._names])
        self._carrier_words = _carrier_words(pack)

    def search(self, text: str, limit: int | None = None) -> SearchResult:
        """Ranked hits for a transcript or typed query; empty when nothing scores `min_score`."""
        query = normalize_text(text)
        grams = _ngrams(query.split(), self._carrier_words, int(self._name_words.max()))
        if not grams:
            return SearchResult(query, ())
        spelling = process.cdist(grams, self._names, scorer=fuzz.ratio, dtype=np.float32)
        sound = process.cdist([_sound(g) for g in grams], self._sounds, scorer=fuzz.ratio, dtype=np.float32)
        weight = self.options.spelling_weight
        combined = (weight * spelling + (1 - weight) * sound) / 100.0
        best_gram = combined.argmax(axis=0)
        name_scores = combined[best_gram, np.arange(len(self._names))]
        return SearchResult(query, self._rank(name_scores, limit or self.options.limit))

    def search_spoken(self, text: str, spots: Sequence[Spot], limit: int | None = None) -> SearchResult:
        """Rank by the names spotted in the audio (best first), down to the first below `min_match`;
        by `text` when nothing was spotted. The query is still the transcript: the user sees it."""
        if not spots:
            return self.search(text, limit)
        limit = limit or self.options.limit
        best: dict[int, SearchHit] = {}
        for spot in spots:
            # Hits are a prefix of the ranking: a weak spot ends it, or a short name that fits
            # well lower down would turn almost any speech into a hit.
            if spot.match < self.options.min_match:
                break
            for owner in self._owners_of.get(spot.phrase, ()):
                if owner not in best and len(best) < limit:
                    best[owner] = SearchHit(self.pack.catalog[owner], spot.match, spot.phrase)
        return SearchResult(normalize_text(text), tuple(best.values()))

    def _rank(self, name_scores: np.ndarray, limit: int) -> tuple[SearchHit, ...]:
        best: dict[int, tuple[float, str]] = {}
        # Equal scores: the longer name wins ("new taipei city" is New Taipei City, not Taipei, though
        # both match exactly), then catalog order (packs list their most searched entries first).
        order = np.lexsort((-self._name_words, -np.round(name_scores, 4)))
        for name_index in order:
            score = float(name_scores[name_index])
            if score < self.options.min_score or len(best) >= limit:
                break
            owner = self._owners[name_index]
            if owner not in best:
                best[owner] = (score, self._names[name_index])
        return tuple(
            SearchHit(self.pack.catalog[owner], round(score, 4), name)
            for owner, (score, name) in best.items()
        )


def _sound(text: str) -> str:
    return " ".join(jellyfish.metaphone(word) for word in text.split())


def _carrier_words(pack: DomainPack) -> frozenset[str]:
    """Words of the query templates that never occur in a catalog name ("weather", "in", ...)."""
    template_words = {
        w for templates in pack.intents.values() for t in templates for w in normalize_text(t).split()
    }
    name_words = {w for e in pack.catalog for n in e.names for w in normalize_text(n).split()}
    return frozenset(template_words - name_words)


def _ngrams(words: Sequence[str], carrier: frozenset[str], max_words: int) -> list[str]:
    """Word n-grams up to the catalog's longest name, except those made only of carrier words."""
    grams = []
    for size in range(1, max_words + 1):
        for start in range(len(words) - size + 1):
            gram = words[start : start + size]
            if not all(w in carrier for w in gram):
                grams.append(" ".join(gram))
    return list(dict.fromkeys(grams))
