"""Phrase spotting: the alignment is CTC's, the stretch is free, and the ranking favours evidence."""

import itertools
import math

import numpy as np
import pytest

from asr.errors import DecoderConfigError
from asr.model import Emissions, Vocabulary
from asr.spotting import (
    PhraseSpotter,
    Spot,
    SpotOptions,
    _best_stretches,
    _bucket,
    _without_sure_blanks,
    best_spots,
)

VOCAB = Vocabulary(("<pad>", "|", "a", "b", "l", "n", "t", "i"), blank_id=0, delimiter_id=1)


def emissions_for(path: str, sure: float = 0.9) -> Emissions:
    """One frame per character of `path` ("-" is a blank, " " the delimiter), each `sure` likely."""
    tokens = ["<pad>" if c == "-" else VOCAB.token_for_char(c) for c in path]
    probs = np.full((len(path), len(VOCAB.tokens)), (1 - sure) / (len(VOCAB.tokens) - 1))
    for frame, token in enumerate(tokens):
        probs[frame, VOCAB.index(str(token))] = sure
    return Emissions(np.log(probs).astype(np.float32), frame_s=0.02)


def fits(phrases: tuple[str, ...], emissions: Emissions) -> dict[str, float]:
    """Each phrase's best log-ratio, read back from the spots' ranking score."""
    spotter = PhraseSpotter(VOCAB, SpotOptions(phrases, char_bonus=0.0, keep=len(phrases)))
    return {s.phrase: s.score for s in spotter.spot(emissions)}


def test_a_phrase_the_best_path_spells_fits_perfectly_whatever_surrounds_it() -> None:
    got = fits(("tall", "bat", "ant"), emissions_for("--ban--at-in--tal-l--"))
    assert got["tall"] == pytest.approx(0.0, abs=1e-4)  # carrier frames around it cost nothing
    assert got["bat"] < -1 and got["ant"] < -1


def test_a_doubled_letter_needs_a_blank_between_as_ctc_does() -> None:
    # "tal" then "l" on the next frame collapses to "tal": "tall" must pay for a missing blank.
    got = fits(("tal", "tall"), emissions_for("-tall-"))
    assert got["tal"] == pytest.approx(0.0, abs=1e-4)
    assert got["tall"] < -1


def test_the_best_fit_equals_brute_force_over_every_stretch_and_alignment() -> None:
    rng = np.random.default_rng(7)
    small = Vocabulary(("<pad>", "|", "a", "b"), blank_id=0, delimiter_id=1)
    log_probs = np.log(rng.dirichlet(np.ones(4), size=6)).astype(np.float32)
    for phrase in ("ab", "aa", "b", "ba b"):
        expected = _brute_force(phrase, log_probs, small)
        spotter = PhraseSpotter(small, SpotOptions((phrase,), char_bonus=0.0))
        (spot,) = spotter.spot(Emissions(log_probs, 0.02))
        assert spot.score == pytest.approx(expected, abs=1e-3), phrase
        assert spot.match == pytest.approx(math.exp(expected / len(phrase)), abs=1e-3)


def test_long_runs_of_sure_blanks_change_no_fit() -> None:
    # At p 0.999 a blank is "sure": all but the first frame of each run are dropped before aligning.
    phrases = ("bat", "tall", "ant")
    short = fits(phrases, emissions_for("-bat-tal-l-", sure=0.999))
    padded = fits(phrases, emissions_for("-----bat-----tal-l-----", sure=0.999))
    assert short == pytest.approx(padded, abs=1e-3)
    assert short["tall"] == pytest.approx(0.0, abs=1e-2)  # the kept blank still splits the "ll"
    dropped = _without_sure_blanks(emissions_for("-----bat-----tal-l-----", sure=0.999).log_probs, 0)
    assert len(dropped) == len("-bat-tal-l-")


def test_ranking_adds_the_char_bonus_and_keeps_the_best() -> None:
    emissions = emissions_for("-bat-")
    spotter = PhraseSpotter(VOCAB, SpotOptions(("b", "bat", "ant", "tin"), char_bonus=3.0, keep=2))
    spots = spotter.spot(emissions)
    assert [s.phrase for s in spots] == ["bat", "b"]
    assert spots[0].score == pytest.approx(9.0, abs=1e-3) and spots[0].match == pytest.approx(1.0, abs=1e-3)


def test_unspellable_phrases_are_skipped_and_empty_emissions_spot_nothing() -> None:
    spotter = PhraseSpotter(VOCAB, SpotOptions(("bat", "zebra", "")))
    assert spotter.phrases == ("bat",)
    assert spotter.spot(Emissions(np.zeros((0, len(VOCAB.tokens)), np.float32), 0.02)) == ()
    with pytest.raises(DecoderConfigError):
        SpotOptions(("bat",), keep=0)


def test_a_carrier_that_fits_closes_its_frames_to_names() -> None:
    emissions = emissions_for("--tal-l--bat--")  # "tall bat": "all" fits inside the carrier "tall"
    open_ = PhraseSpotter(VOCAB, SpotOptions(("all", "bat"), char_bonus=0.0))
    assert {s.phrase: s.match for s in open_.spot(emissions)} == pytest.approx(
        {"all": 1.0, "bat": 1.0}, abs=1e-3
    )
    closed = PhraseSpotter(VOCAB, SpotOptions(("all", "bat"), char_bonus=0.0, carriers=("tall",)))
    spots = {s.phrase: s.match for s in closed.spot(emissions)}
    assert spots["bat"] == pytest.approx(1.0, abs=1e-3)
    assert spots["all"] < 0.1  # only stretches outside "tall" are left: two of its frames misfit


def test_a_carrier_that_fits_badly_closes_nothing() -> None:
    emissions = emissions_for("--bat-in--")
    options = SpotOptions(("bat", "tin"), char_bonus=0.0, carriers=("tall",), carrier_floor=0.35)
    assert PhraseSpotter(VOCAB, options).spot(emissions) == PhraseSpotter(
        VOCAB, SpotOptions(("bat", "tin"), char_bonus=0.0)
    ).spot(emissions)
    with pytest.raises(DecoderConfigError):
        SpotOptions(("bat",), carrier_floor=1.5)


def test_the_best_stretch_is_where_brute_force_finds_the_best_fit() -> None:
    rng = np.random.default_rng(11)
    small = Vocabulary(("<pad>", "|", "a", "b"), blank_id=0, delimiter_id=1)
    for trial in range(20):
        log_probs = np.log(rng.dirichlet(np.ones(4) * 0.3, size=6)).astype(np.float32)
        phrases = [(tuple(small.index(str(t)) for t in small.spell(p) or []), p) for p in ("ab", "a", "ba")]
        ratios = np.zeros((7, 5), dtype=np.float32)  # as `spot` builds them: a free column, a last frame
        ratios[:-1, :-1] = log_probs - log_probs.max(axis=1, keepdims=True)
        ratios[-1, :-1] = -1e9
        fits, starts, ends = _best_stretches(ratios, _bucket(phrases, small.blank_id, 4))
        for (_, phrase), fit, start, end in zip(phrases, fits, starts, ends, strict=True):
            assert fit == pytest.approx(_brute_force(phrase, log_probs, small), abs=1e-3), (trial, phrase)
            inside = _brute_force(phrase, log_probs[start:end], small)  # the stretch alone holds the fit
            assert inside == pytest.approx(fit, abs=1e-3), (trial, phrase, start, end)


def test_segments_merge_to_each_phrases_best_spot() -> None:
    first = (Spot("bat", 5.0, 0.5), Spot("ant", 1.0, 0.2))
    second = (Spot("ant", 7.0, 0.9),)
    assert best_spots([first, second]) == (Spot("ant", 7.0, 0.9), Spot("bat", 5.0, 0.5))


def _brute_force(phrase: str, log_probs: np.ndarray, vocab: Vocabulary) -> float:
    """Best sum over a stretch [start, end) and a CTC path there that collapses to `phrase`, of
    each frame's log-probability minus the frame's best."""
    target = [vocab.index(str(t)) for t in vocab.spell(phrase) or []]
    ratios = log_probs - log_probs.max(axis=1, keepdims=True)
    best = -math.inf
    frames = len(log_probs)
    for start in range(frames):
        for end in range(start + 1, frames + 1):
            for path in itertools.product(range(len(vocab.tokens)), repeat=end - start):
                if _collapse(path, vocab.blank_id) == target:
                    best = max(best, float(sum(ratios[start + i, t] for i, t in enumerate(path))))
    return best


def _collapse(path: tuple[int, ...], blank: int) -> list[int]:
    merged = [t for i, t in enumerate(path) if i == 0 or t != path[i - 1]]
    return [t for t in merged if t != blank]
