import pytest

from asr.text import ALPHABET, normalize_text, spell_integer


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Hello, World!", "hello world"),
        ("  Weather   in\tPARIS\n", "weather in paris"),
        ("Café Müller", "cafe muller"),
        ("I don't know", "i don't know"),
        ("I don’t know", "i don't know"),
        ("'quoted' words'", "quoted words"),
        ("route 66", "route sixty six"),
        ("the 3rd of May", "the third of may"),
        ("the 21st century", "the twenty first century"),
        ("the 12th night", "the twelfth night"),
        ("3.5 miles", "three point five miles"),
        ("R&B at 50%", "r and b at fifty percent"),
        ("author of the danger trail, philip steels, etc.", "author of the danger trail philip steels etc"),
        ("e-mail", "e mail"),
        ("", ""),
        ("!!!", ""),
    ],
)
def test_normalize_text(raw: str, expected: str) -> None:
    assert normalize_text(raw) == expected


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (0, "zero"),
        (13, "thirteen"),
        (40, "forty"),
        (99, "ninety nine"),
        (100, "one hundred"),
        (2024, "two thousand twenty four"),
        (1_000_001, "one million one"),
    ],
)
def test_spell_integer(n: int, words: str) -> None:
    assert spell_integer(n) == words


def test_spell_integer_rejects_negative() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        spell_integer(-1)


def test_output_stays_in_alphabet_and_is_idempotent() -> None:
    messy = "Ünïcode — “quotes”, 42nd St. & 7% (maybe) naïve‽ 日本"
    once = normalize_text(messy)
    assert set(once) <= ALPHABET
    assert normalize_text(once) == once
    assert "  " not in once
