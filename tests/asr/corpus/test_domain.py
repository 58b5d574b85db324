import json
from pathlib import Path

import pytest

from asr.corpus.domain import DomainPack
from asr.errors import DataError
from serving.settings import DEFAULT_DOMAIN_DIR


@pytest.fixture(scope="module")
def pack() -> DomainPack:
    return DomainPack.load(DEFAULT_DOMAIN_DIR)


def test_default_pack_loads_with_cities_and_countries(pack: DomainPack) -> None:
    kinds = {e.fields["kind"] for e in pack.catalog}
    assert kinds == {"city", "country"}
    assert len(pack.entries_for("city")) >= 200
    assert any(e.title == "Mumbai" and "Bombay" in e.aliases for e in pack.catalog)


def test_expand_is_seeded_distinct_and_names_catalog_entries(pack: DomainPack) -> None:
    first = pack.expand(300, seed=1)
    assert first == pack.expand(300, seed=1)
    assert first != pack.expand(300, seed=2)
    assert len({q.text for q in first}) == 300
    ids = {e.id: e for e in pack.catalog}
    for query in first[:50]:
        assert query.intent in pack.intents
        names = [n for i in query.entry_ids for n in ids[i].names]
        assert any(_norm(n) in query.text for n in names), query


def _norm(text: str) -> str:
    from asr.text import normalize_text

    return normalize_text(text)


def test_vocabulary_and_phrases_are_normalized(pack: DomainPack) -> None:
    assert "weather" in pack.vocabulary()
    assert "sao" in pack.vocabulary()  # São Paulo, accent folded
    assert "new york city" in pack.phrases()
    assert all(w == _norm(w) for w in pack.vocabulary())


def write_pack(folder: Path, catalog: str, templates: dict[str, object]) -> Path:
    folder.mkdir()
    (folder / "catalog.jsonl").write_text(catalog)
    (folder / "templates.json").write_text(json.dumps(templates))
    return folder


def test_a_minimal_pack(tmp_path: Path) -> None:
    catalog = '{"id": "1", "title": "Blue Cafe", "aliases": ["the blue"], "fields": {"kind": "cafe"}}\n'
    pack = DomainPack.load(
        write_pack(
            tmp_path / "p", catalog, {"slots": {"cafe": {"kind": "cafe"}}, "intents": {"go": ["open {cafe}"]}}
        )
    )
    assert {q.text for q in pack.expand(5, seed=0)} == {"open blue cafe", "open the blue"}


def test_carriers_are_the_templates_words_around_the_slots(tmp_path: Path) -> None:
    catalog = '{"id": "1", "title": "Map Room", "fields": {"kind": "cafe"}}\n'
    templates = {
        "slots": {"cafe": {"kind": "cafe"}},
        "intents": {
            "go": ["How do I get to {cafe}?", "{cafe} on the map", "from {cafe} to {cafe}", "map room"]
        },
    }
    pack = DomainPack.load(write_pack(tmp_path / "p", catalog, templates))
    # "from", "to": too short to close; "map room": inside a name; the rest normalized.
    assert pack.carriers() == ("how do i get to", "on the map")
    assert pack.spotting().carriers == pack.carriers()


@pytest.mark.parametrize(
    ("catalog", "templates", "message"),
    [
        ("", {"slots": {}, "intents": {}}, "empty"),
        ('{"title": "x"}\n', {"slots": {}, "intents": {}}, "needs 'id' and 'title'"),
        ('{"id": "1", "title": "x"}\n', {"slots": {}, "intents": {"a": ["to {city}"]}}, "undefined slots"),
        (
            '{"id": "1", "title": "x"}\n',
            {"slots": {"city": {"kind": "city"}}, "intents": {}},
            "matches no catalog entry",
        ),
    ],
)
def test_malformed_packs_are_data_errors(
    tmp_path: Path, catalog: str, templates: dict[str, object], message: str
) -> None:
    with pytest.raises(DataError, match=message):
        DomainPack.load(write_pack(tmp_path / "p", catalog, templates))


def test_missing_pack(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read"):
        DomainPack.load(tmp_path / "absent")
