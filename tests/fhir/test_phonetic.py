from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.fhir.phonetic import cologne, name_keys, query_key


@pytest.mark.parametrize(
    ("word", "key"),
    [
        # Postel's own example and the usual reference values of the algorithm.
        ("Müller-Lüdenscheidt", "65752682"),
        ("Wikipedia", "3412"),
        ("Breschnew", "17863"),
        # Every rule of the table, once.
        ("Aa", "0"),  # a vowel is kept at the start only, runs merge
        ("Hah", "0"),  # h is silent
        ("Ph", "3"),  # p before h is f
        ("Pa", "1"),
        ("Dc", "8"),  # d, t before c, s, z
        ("Ta", "2"),
        ("Ca", "4"),  # c at the start before a, h, k, l, o, q, r, u, x
        ("Cl", "45"),
        ("Ce", "8"),  # c at the start otherwise
        ("Aca", "04"),  # c before a, h, k, o, q, u, x
        ("Sca", "8"),  # ... but not after s or z
        ("Acl", "085"),  # c before l, not at the start
        ("Ax", "048"),  # x is ks
        ("Kx", "48"),  # x after c, k, q is s
        ("", ""),
        ("1234", ""),
    ],
)
def test_cologne_phonetics(word: str, key: str) -> None:
    assert cologne(word) == key


@pytest.mark.parametrize(
    "spellings",
    [
        ("Meijer", "Meyer", "Maier", "Mayer", "Meier"),  # ij, ei, y, ai
        ("Dijkstra", "Dykstra", "Deikstra"),
        ("Jansen", "Janssen", "Jannsen"),  # doubled letters
        ("Schouten", "Souten"),  # sch is s
        ("Claessen", "Klaasen", "Claasen"),  # c/k, ae/aa
        ("Bogaert", "Bochaert", "Bogart"),  # g/ch
        ("Brand", "Brandt", "Brant"),  # final devoicing, dt
        ("Visser", "Fisser"),  # f/v
        ("Wouters", "Vouters"),  # w/v
        ("de Jong", "de Jongh", "Dejong"),  # silent h, words together
        ("Brouwer", "Brauwer"),  # ou/au
        ("Sjoerd", "Sjoert"),
        ("Hélène", "Helene", "HELENE"),  # accents and case
    ],
)
def test_dutch_spelling_variants_share_a_key(spellings: tuple[str, ...]) -> None:
    keys = {query_key(spelling) for spelling in spellings}
    assert len(keys) == 1, keys
    assert keys != {""}


@pytest.mark.parametrize(
    ("first", "second"),
    [("Jansen", "Jacobs"), ("Bakker", "Visser"), ("de Vries", "de Wit"), ("Smit", "Smits")],
)
def test_different_names_differ(first: str, second: str) -> None:
    assert query_key(first) != query_key(second)


def test_a_name_is_found_by_each_word_and_all_words_together() -> None:
    keys = name_keys("van der Berg")
    assert keys == (cologne("van"), cologne("der"), cologne("Berg"), cologne("vanderberg"))
    assert query_key("Berg") in keys
    assert query_key("van der  Berg") in keys
    assert query_key("Vanderberg") in keys
    assert name_keys("Berg") == (cologne("Berg"),)
    assert name_keys("12 34") == ()  # no letters, no keys


@given(st.text(max_size=40))
def test_any_text_has_a_key_of_digits(text: str) -> None:
    key = query_key(text)
    assert key == "" or key.isdigit()
    assert "00" not in key and "0" not in key[1:]  # zeros only at the start
    assert all(key and key.isdigit() for key in name_keys(text))
