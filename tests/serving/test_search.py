"""Catalog search over the bundled places pack: misspellings, sound-alikes, carrier words, nothing found."""

import pytest

from asr.corpus.domain import DomainPack
from asr.spotting import Spot
from serving.search import CatalogIndex, SearchOptions
from serving.settings import DEFAULT_DOMAIN_DIR, Settings


@pytest.fixture(scope="module")
def index() -> CatalogIndex:
    return CatalogIndex(DomainPack.load(DEFAULT_DOMAIN_DIR))


@pytest.mark.parametrize(
    ("query", "title"),
    [
        ("weather in paris", "Paris"),
        ("weather in pariss", "Paris"),  # a spelling slip
        ("directions to bejing", "Beijing"),
        ("capital of jermany", "Germany"),  # sounds right, spelled wrong
        ("show me rio de janero", "Rio de Janeiro"),  # a multi-word name
        ("peking", "Beijing"),  # an alias
        ("WEATHER IN LONDON!", "London"),  # the shared normalizer
    ],
)
def test_the_intended_entry_ranks_first(index: CatalogIndex, query: str, title: str) -> None:
    result = index.search(query)
    assert result.found
    assert result.hits[0].entry.title == title


def test_a_query_naming_two_places_finds_both(index: CatalogIndex) -> None:
    titles = [h.entry.title for h in index.search("flights from new yorc to londen").hits[:2]]
    assert set(titles) == {"New York City", "London"}


@pytest.mark.parametrize("query", ["hello there", "what is the weather", "", "qqqq zzzz"])
def test_nothing_found_is_said_not_guessed(index: CatalogIndex, query: str) -> None:
    result = index.search(query)
    assert not result.found and result.hits == ()


def test_hits_are_ranked_limited_and_scored_in_unit_range(index: CatalogIndex) -> None:
    hits = index.search("san", limit=3).hits
    assert 1 <= len(hits) <= 3
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert all(0 <= h.score <= 1 for h in hits)
    assert len({h.entry.id for h in hits}) == len(hits)


def test_the_threshold_is_a_setting(index: CatalogIndex) -> None:
    strict = CatalogIndex(index.pack, SearchOptions(min_score=0.99))
    assert strict.search("weather in pariss").hits == ()
    assert strict.search("weather in paris").hits[0].entry.title == "Paris"


def test_spoken_queries_rank_by_the_names_spotted_in_the_audio(index: CatalogIndex) -> None:
    spots = (Spot("salvador", 20.0, 0.44), Spot("hong kong", 12.0, 0.3), Spot("davao", 10.0, 0.9))
    result = index.search_spoken("hotels in caledo", spots)
    assert result.query == "hotels in caledo"  # the user still sees what was heard
    assert [h.entry.title for h in result.hits][:2] == ["Salvador", "Hong Kong"]
    assert result.hits[0].matched == "salvador" and result.hits[0].score == 0.44
    # A name two entries share (the city and the region) finds both, each once.
    assert len({h.entry.id for h in result.hits}) == len(result.hits)
    assert sum(h.matched == "hong kong" for h in result.hits) == 2


def test_spots_below_the_match_floor_are_not_found_and_no_spots_means_the_transcript(
    index: CatalogIndex,
) -> None:
    assert not index.search_spoken("weather in paris", (Spot("lima", 9.0, 0.1),)).found
    # Hits are a prefix of the ranking: a weak spot ends the list even if a better match follows.
    cut = index.search_spoken("", (Spot("paris", 20.0, 0.5), Spot("lima", 9.0, 0.1), Spot("rome", 8.0, 0.9)))
    assert [h.entry.title for h in cut.hits] == ["Paris"]
    assert index.search_spoken("weather in paris", ()).hits[0].entry.title == "Paris"
    strict = CatalogIndex(index.pack, SearchOptions(min_match=0.5))
    assert [h.entry.title for h in strict.search_spoken("", (Spot("paris", 9.0, 0.4),)).hits] == []


@pytest.mark.parametrize(
    "bad", [{"spot_char_bonus": -1.0}, {"search_min_match": 1.5}, {"search_min_score": -0.1}]
)
def test_bad_search_settings_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        Settings(**bad)  # type: ignore[arg-type]
