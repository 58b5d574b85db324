"""The one text normalizer, shared by training, evaluation, data checks and search.

A transcript and a reference are only comparable when both went through the same function, so
everything that compares or trains on text calls `normalize_text`. The output alphabet is
`ALPHABET`: lowercase a-z, the apostrophe, and single spaces between words. Digits are spelled out
("42" -> "forty two") because speech carries the words, not the digits.
"""

import re
import unicodedata

ALPHABET = frozenset("abcdefghijklmnopqrstuvwxyz' ")

_ONES = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen",
)  # fmt: skip
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"))
_ORDINAL_SUFFIX = re.compile(r"^(\d+)(st|nd|rd|th)$")
_ORDINAL_WORDS = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}
_SYMBOL_WORDS = {"&": " and ", "%": " percent ", "+": " plus ", "@": " at "}
_NUMBER = re.compile(r"\d+(?:st|nd|rd|th)?(?:\.\d+)?")
_APOSTROPHES = str.maketrans({"’": "'", "‘": "'", "`": "'", "´": "'"})
_NOT_ALPHABET = re.compile(r"[^a-z' ]+")
_LOOSE_APOSTROPHE = re.compile(r"(?<![a-z])'|'(?![a-z])")
_SPACES = re.compile(r"\s+")


def spell_integer(n: int) -> str:
    """Spell a non-negative integer in English words without "and": 2024 -> "two thousand twenty four"."""
    if n < 0:
        raise ValueError("spell_integer takes a non-negative integer")
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + ("" if ones == 0 else " " + _ONES[ones])
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return _ONES[hundreds] + " hundred" + ("" if rest == 0 else " " + spell_integer(rest))
    for scale, name in _SCALES:
        if n >= scale:
            high, rest = divmod(n, scale)
            return spell_integer(high) + " " + name + ("" if rest == 0 else " " + spell_integer(rest))
    raise AssertionError("unreachable: every n >= 1000 has a scale")  # pragma: no cover


def _ordinal(words: str) -> str:
    *head, last = words.split()
    if last in _ORDINAL_WORDS:
        last = _ORDINAL_WORDS[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return " ".join([*head, last])


def _spell_number(match: re.Match[str]) -> str:
    token = match.group(0)
    ordinal = _ORDINAL_SUFFIX.match(token)
    if ordinal:
        return " " + _ordinal(spell_integer(int(ordinal.group(1)))) + " "
    whole, _, fraction = token.partition(".")
    words = spell_integer(int(whole))
    if fraction:
        words += " point " + " ".join(_ONES[int(d)] for d in fraction)
    return " " + words + " "


def normalize_text(text: str) -> str:
    """Map any text to the model alphabet: lowercase words of a-z and ', separated by one space.

    Accents are folded ("café" -> "cafe"), digits are spelled out, "&" and "%" become words, all
    other punctuation separates words, and apostrophes survive only inside words ("don't").
    """
    folded = unicodedata.normalize("NFKD", text.translate(_APOSTROPHES))
    ascii_text = folded.encode("ascii", "ignore").decode("ascii").lower()
    for symbol, word in _SYMBOL_WORDS.items():
        ascii_text = ascii_text.replace(symbol, word)
    spelled = _NUMBER.sub(_spell_number, ascii_text)
    letters = _NOT_ALPHABET.sub(" ", spelled)
    letters = _LOOSE_APOSTROPHE.sub(" ", letters)
    return _SPACES.sub(" ", letters).strip()


def vocabulary_words(text: str) -> list[str]:
    """The words of `text` as the vocabulary knows them (normalized, split on spaces)."""
    return normalize_text(text).split()
