"""Phrase spotting: how well each phrase of a fixed list fits somewhere in a clip's CTC output.

A closed catalog lets search ask the acoustic model a narrower question than "what was said":
"where, and how well, could each catalog name have been said?". A weak model's best path for
"hotels in salvador" may read "hotels in saha", yet its per-frame probabilities still hold most of
"salvador". For each phrase the spotter finds the CTC alignment of its characters to the stretch
of frames that fits them best, scoring every frame against that frame's most likely token: a
log-likelihood ratio, 0 where the best path spells the phrase and negative elsewhere. Frames
outside the stretch are free, so the carrier words around a name ("hotels in") cost nothing and
no query grammar is assumed.

A short phrase fits some stretch of almost any clip, so ranking adds `char_bonus` per character
of the phrase: the log-ratio a character may cost before a longer phrase stops being preferred.
On the places catalog's 207 dev queries (held-out synthetic voices, the bundled model, carrier
words closed) 4.0 with search's `min_match` of 0.12 gave the most right first hits of 3.5-4.5,
and fewer hits on out-of-domain sentences than 3.5; see docs/benchmarks.md, "Spotting catalog
names". A model that hears more wants a larger bonus: 3.0 was best for the wav2vec2 transplant,
3.5 for the model bundled before this one.

A name also fits inside the carrier words themselves: "pretoria" in "temperature in", "peking"
in "speak in ghana". So the spotter first aligns the domain's carrier phrases (the query
templates' words around the slot) the same way, and the frames of each carrier that fits well
(per-character ratio at least `carrier_floor`) are closed to names. On the dev queries, with the
model bundled before this one, this put the intended entry first for 73.9% of them instead of 68.6%.
"""

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from asr.errors import DecoderConfigError
from asr.model import Emissions, Vocabulary

logger = logging.getLogger(__name__)

_NEVER = np.float32(-1e9)
"""Log score of an alignment state that cannot be reached (finite, so sums stay finite)."""

_UNREACHED = _NEVER / 2
"""Fits below this went through an unreachable state: the phrase fits nowhere."""

_SURE_BLANK = math.log(0.99)

_BUCKET = 128
"""Phrases aligned together, grouped by length so padding stays short."""


@dataclass(frozen=True)
class SpotOptions:
    phrases: tuple[str, ...]
    """Normalized phrases (the catalog's names); ones the model's alphabet cannot spell are skipped."""
    char_bonus: float = 4.0
    keep: int = 20
    """Best phrases kept per clip: search needs the top few, events and memory need them bounded."""
    carriers: tuple[str, ...] = ()
    """Normalized words queries put around a name ("temperature in"): their frames hold no name."""
    carrier_floor: float = 0.35
    """A carrier closes its frames only when it fits at least this well (per-character ratio);
    chosen on dev queries from 0.25-0.5 (docs/benchmarks.md, "Carrier words")."""

    def __post_init__(self) -> None:
        if self.char_bonus < 0 or self.keep < 1 or not 0 <= self.carrier_floor <= 1:
            raise DecoderConfigError("spotting needs char_bonus >= 0, keep >= 1 and carrier_floor in [0, 1]")


@dataclass(frozen=True)
class Spot:
    phrase: str
    score: float
    """Ranking score: the phrase's best log-likelihood ratio plus `char_bonus` per character."""
    match: float
    """Per-character likelihood ratio against the best path, in (0, 1]: 1.0 when the best path
    spells the phrase, about 0.37 when each character costs one nat."""


@dataclass(frozen=True)
class _Bucket:
    """Phrases aligned together. Each row's states are: a free start, then CTC's blank, c1, blank,
    c2, ..., blank, then a free end (and padding). The free states score every frame 0 (the
    frame-wise best), so an alignment may begin and end on any frame, and after the last frame
    the free end holds the phrase's best fit."""

    states: np.ndarray
    """(states, phrases) token ids, or `free` (one past the vocabulary) for the free states."""
    skip_cost: np.ndarray
    """(states, phrases) 0 where a state may be entered from two states back (passing over a
    blank), `_NEVER` where not."""
    ends: np.ndarray
    """(phrases,) index of each phrase's free end state."""


class PhraseSpotter:
    """Scores a fixed phrase list against emissions. Thread-safe (read-only after construction)."""

    def __init__(self, vocab: Vocabulary, options: SpotOptions) -> None:
        self.vocab = vocab
        self.options = options
        usable = _spellable(vocab, options.phrases)
        free = len(vocab.tokens)  # the extra column `spot` adds for the free states
        self._buckets = [
            _bucket(usable[i : i + _BUCKET], vocab.blank_id, free) for i in range(0, len(usable), _BUCKET)
        ]
        self.phrases = tuple(p for _, p in usable)
        self._chars = np.array([len(ids) for ids, _ in usable])
        carriers = _spellable(vocab, options.carriers)
        self._carriers = _bucket(carriers, vocab.blank_id, free) if carriers else None
        self._carrier_chars = np.array([len(ids) for ids, _ in carriers])

    def spot(self, emissions: Emissions) -> tuple[Spot, ...]:
        """The `keep` best phrases for one clip, best first; () for a clip with no frames."""
        log_probs = _without_sure_blanks(emissions.log_probs, self.vocab.blank_id)
        if not self.phrases or len(log_probs) == 0:
            return ()
        # One extra column scores the free states (0 on every frame), and one extra frame where
        # only they can be reached lets a phrase that ends on the last frame step into its end.
        ratios = np.zeros((len(log_probs) + 1, log_probs.shape[1] + 1), dtype=np.float32)
        ratios[:-1, :-1] = log_probs - log_probs.max(axis=1, keepdims=True)
        ratios[-1, :-1] = _NEVER
        ratios[self._carrier_frames(ratios), :-1] = _NEVER
        fits = np.concatenate([_best_fit(ratios, bucket) for bucket in self._buckets])
        scores = fits + self.options.char_bonus * self._chars
        best = np.argsort(-scores, kind="stable")[: self.options.keep]
        return tuple(
            Spot(self.phrases[i], round(float(scores[i]), 4), round(math.exp(fits[i] / self._chars[i]), 4))
            for i in best
            if fits[i] > _UNREACHED  # a phrase with no open stretch long enough is not a spot
        )

    def _carrier_frames(self, ratios: np.ndarray) -> np.ndarray:
        """The frames of the carriers that fit well, best first, skipping any that overlaps one
        taken: a boolean mask over `ratios`' rows."""
        closed = np.zeros(len(ratios), dtype=bool)
        if self._carriers is None:
            return closed
        fits, starts, ends = _best_stretches(ratios, self._carriers)
        matches = np.exp(fits / self._carrier_chars)
        for i in np.argsort(-(fits + self.options.char_bonus * self._carrier_chars), kind="stable"):
            if matches[i] >= self.options.carrier_floor and not closed[starts[i] : ends[i]].any():
                closed[starts[i] : ends[i]] = True
        return closed


def best_spots(groups: Sequence[Sequence[Spot]]) -> tuple[Spot, ...]:
    """Merge the spots of several segments of one input: each phrase's best, best first."""
    best: dict[str, Spot] = {}
    for spots in groups:
        for spot in spots:
            if spot.phrase not in best or spot.score > best[spot.phrase].score:
                best[spot.phrase] = spot
    return tuple(sorted(best.values(), key=lambda s: -s.score))


def _spellable(vocab: Vocabulary, phrases: Sequence[str]) -> list[tuple[tuple[int, ...], str]]:
    """Each phrase the alphabet can spell, as token ids, shortest first (buckets pad less)."""
    spelled = [(vocab.spell(p), p) for p in dict.fromkeys(phrases) if p]
    if unspellable := [p for tokens, p in spelled if tokens is None]:
        logger.warning("spotting skips %d unspellable phrases: %s", len(unspellable), unspellable[:5])
    return sorted(
        ((tuple(map(vocab.index, tokens)), p) for tokens, p in spelled if tokens is not None),
        key=lambda pair: (len(pair[0]), pair[1]),
    )


def _without_sure_blanks(log_probs: np.ndarray, blank: int) -> np.ndarray:
    """Drop all but the first frame of each run the model is sure (p > 0.99) is blank: such
    frames cannot hold a character, and the kept one still separates doubled letters. On the
    dev queries this removed 24% of frames and changed no first spot."""
    sure = log_probs[:, blank] > _SURE_BLANK
    repeated = np.zeros_like(sure)
    repeated[1:] = sure[1:] & sure[:-1]
    return log_probs[~repeated]


def _bucket(group: Sequence[tuple[tuple[int, ...], str]], blank: int, free: int) -> _Bucket:
    width = 2 * max(len(ids) for ids, _ in group) + 3
    states = np.full((width, len(group)), free, dtype=np.int64)
    skip_cost = np.full((width, len(group)), _NEVER, dtype=np.float32)
    for column, (ids, _) in enumerate(group):
        end = 2 * len(ids) + 2  # the free end state
        states[1:end, column] = blank
        states[2:end:2, column] = ids
        # A character may follow the previous one without a blank unless it repeats it (CTC
        # needs a blank between the "n" and "n" of "tallinn"); the first character may start the
        # alignment and the last may end it.
        for k, token in enumerate(ids):
            if k == 0 or token != ids[k - 1]:
                skip_cost[2 * k + 2, column] = 0.0
        skip_cost[end, column] = 0.0
    return _Bucket(states=states, skip_cost=skip_cost, ends=np.array([2 * len(ids) + 2 for ids, _ in group]))


def _best_fit(ratios: np.ndarray, bucket: _Bucket) -> np.ndarray:
    """Each phrase's best log-ratio over any stretch of frames (Viterbi with free start and end).

    `ratios` has one extra, all-zero column for the free states. Arrays are state-major, so
    each shift by one or two states is a contiguous block: 1.6x faster than phrase-major."""
    width, count = bucket.states.shape
    alpha = np.full((width, count), _NEVER, dtype=np.float32)
    alpha[0] = 0.0
    entered = np.empty_like(alpha)
    entered[0] = 0.0  # the free start: always reachable, at no cost
    skipped = np.empty((width - 2, count), dtype=np.float32)
    for frame in ratios[:, bucket.states]:  # (states, phrases) per frame
        np.maximum(alpha[1:], alpha[:-1], out=entered[1:])
        np.add(alpha[:-2], bucket.skip_cost[2:], out=skipped)
        np.maximum(entered[2:], skipped, out=entered[2:])
        np.add(entered, frame, out=alpha)
    fits: np.ndarray = alpha[bucket.ends, np.arange(count)]
    return fits


def _best_stretches(ratios: np.ndarray, bucket: _Bucket) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`_best_fit`, and where each phrase's best stretch lies: (fits, first frames, ends), the
    ends exclusive. Each state carries the first frame of its best path; the free end notes the
    frame at which the path entered it. Slower than `_best_fit`: for the few carrier phrases."""
    width, count = bucket.states.shape
    alpha = np.full((width, count), _NEVER, dtype=np.float32)
    alpha[0] = 0.0
    first = np.zeros((width, count), dtype=np.int64)
    end = np.zeros((width, count), dtype=np.int64)
    for t, frame in enumerate(ratios[:, bucket.states]):
        score, came, ended = alpha.copy(), first.copy(), end.copy()
        for back, cost in ((1, 0.0), (2, bucket.skip_cost[2:])):
            moved = alpha[:-back] + cost
            better = moved > score[back:]
            score[back:] = np.where(better, moved, score[back:])
            came[back:] = np.where(better, first[:-back], came[back:])
            ended[back:] = np.where(better, t, ended[back:])  # for the free end: entered at frame t
        score[0], came[0] = 0.0, t + 1  # the free start: a path leaving it after frame t starts at t + 1
        alpha, first, end = score + frame, came, ended
    columns = np.arange(count)
    return alpha[bucket.ends, columns], first[bucket.ends, columns], end[bucket.ends, columns]
