"""Phonetic keys of names, for the FHIR R4 `phonetic` search parameter.

The algorithm is the Kölner Phonetik (H. J. Postel, "Die Kölner Phonetik. Ein Verfahren zur
Identifizierung von Personennamen auf der Grundlage der Gestaltanalyse", IBM-Nachrichten 19,
1969, pp. 925-931), as published, without changes. It was made for German names, and its
rules fold exactly the spelling variants of Dutch names:

- every vowel and `j`/`y` is one sound, dropped after the first letter: `ij`, `ei`, `y`,
  `ae`/`aa`, `ou`/`au` and doubled vowels all agree (Meijer = Meyer = Maier, Dijkstra =
  Dykstra, Brouwer = Brauwer);
- `g`, `ch`, `k`, `c` (before a, o, u, ...) and `q` are one sound (Bogaert = Bochaert,
  Claessen = Klaasen); `sch` is `s` (Schouten = Souten);
- `d` and `t` are one sound, so final devoicing and `dt` agree (Brand = Brant = Brandt);
  `f`, `v`, `w` and `ph` are one sound (Visser = Fisser, Wouters = Vouters);
- doubled letters count once (Jansen = Janssen), and `h` is silent (de Jongh = de Jong).

A key is a string of digits. Letters are compared as `hub.fhir.extract.normalize` leaves
them: case-folded and without accents (`é` is `e`, `ß` is `ss`); anything but the letters
a-z is skipped, so a word without them has no key.
"""

from __future__ import annotations

import unicodedata
from itertools import groupby

_SIMPLE = {
    **dict.fromkeys("aeijouy", "0"),
    "b": "1",
    **dict.fromkeys("fvw", "3"),
    **dict.fromkeys("gkq", "4"),
    "l": "5",
    **dict.fromkeys("mn", "6"),
    "r": "7",
    **dict.fromkeys("sz", "8"),
}
# The contexts of the letters whose code depends on their neighbours (Postel's table).
_C_HARD_AT_START = frozenset("ahkloqrux")
_C_HARD = frozenset("ahkoqux")
_AFTER_SIBILANT = frozenset("sz")
_BEFORE_SIBILANT = frozenset("csz")
_HARD_BEFORE_X = frozenset("ckq")


def _letters(text: str) -> str:
    """`text` as the letters a-z only: case-folded, accents dropped, everything else skipped."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(char for char in decomposed if "a" <= char <= "z")


def _code(letters: str, index: int) -> str:
    """The code of the letter at `index`: digits, or "" for a silent letter."""
    letter = letters[index]
    before = letters[index - 1] if index > 0 else ""
    after = letters[index + 1] if index + 1 < len(letters) else ""
    if letter == "h":
        return ""
    if letter == "p":
        return "3" if after == "h" else "1"
    if letter in "dt":
        return "8" if after in _BEFORE_SIBILANT else "2"
    if letter == "c":
        if index == 0:
            return "4" if after in _C_HARD_AT_START else "8"
        hard = after in _C_HARD and before not in _AFTER_SIBILANT
        return "4" if hard else "8"
    if letter == "x":
        return "8" if before in _HARD_BEFORE_X else "48"
    return _SIMPLE[letter]


def cologne(word: str) -> str:
    """The Kölner Phonetik key of `word` (digits; "" when it holds no letter a-z).

    Postel's three steps: code every letter by its context, merge runs of one
    digit, then drop the vowel code 0 everywhere but at the start.
    """
    letters = _letters(word)
    digits = "".join(_code(letters, index) for index in range(len(letters)))
    merged = [digit for digit, _run in groupby(digits)]
    return "".join(digit for index, digit in enumerate(merged) if digit != "0" or index == 0)


def name_keys(text: str) -> tuple[str, ...]:
    """The keys a name part is found by: each of its words, and the words written together.

    So `van der Berg` is found by `Berg`, by `van der Berg` and by `Vanderberg`.
    """
    words = text.split()
    keys = [cologne(word) for word in words]
    if len(words) > 1:
        keys.append(cologne("".join(words)))
    return tuple(dict.fromkeys(key for key in keys if key))


def query_key(text: str) -> str:
    """The key a searched value matches: all its words written together ("" if no letters)."""
    return cologne("".join(text.split()))
