from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.rules.bsn import is_valid_bsn

WEIGHTS = (9, 8, 7, 6, 5, 4, 3, 2)


def with_check_digit(first_eight: str) -> str | None:
    """The BSN that completes `first_eight`, or None when no check digit fits."""
    check = sum(int(d) * w for d, w in zip(first_eight, WEIGHTS, strict=True)) % 11
    return None if check == 10 else first_eight + str(check)


valid_bsns = (
    st.text(alphabet="0123456789", min_size=8, max_size=8)
    .map(with_check_digit)
    .filter(lambda bsn: bsn is not None and bsn != "000000000")
    .map(str)
)


@pytest.mark.parametrize("bsn", ["123456782", "111222333", "999999990"])
def test_known_valid_numbers_pass(bsn: str) -> None:
    assert is_valid_bsn(bsn)


@pytest.mark.parametrize(
    ("bsn", "why"),
    [
        ("123456789", "wrong check digit"),
        ("000000000", "all zeros passes the arithmetic but is no BSN"),
        ("12345678", "eight digits: must be written with a leading zero"),
        ("1234567820", "ten digits"),
        ("", "empty"),
        ("12345678a", "a letter"),
        ("123 45 678", "spaces"),
        (" 123456782", "leading space"),
        ("١٢٣٤٥٦٧٨٢", "Arabic-Indic digits are digits to str.isdigit, not to us"),
        ("-23456782", "a sign"),
    ],
)
def test_invalid_numbers_fail(bsn: str, why: str) -> None:
    assert not is_valid_bsn(bsn), why


def test_an_eight_digit_number_counts_only_with_its_leading_zero() -> None:
    assert is_valid_bsn("012345672")
    assert not is_valid_bsn("12345672")


@settings(database=None)
@given(valid_bsns)
def test_every_number_with_a_matching_check_digit_passes(bsn: str) -> None:
    assert is_valid_bsn(bsn)


@settings(database=None)
@given(valid_bsns, st.integers(0, 8), st.integers(1, 9))
def test_a_single_wrong_digit_is_always_caught(bsn: str, position: int, shift: int) -> None:
    digit = (int(bsn[position]) + shift) % 10
    typo = bsn[:position] + str(digit) + bsn[position + 1 :]
    assert typo != bsn
    assert not is_valid_bsn(typo)


@settings(database=None)
@given(valid_bsns, st.integers(0, 7))
def test_swapping_two_different_neighbours_is_always_caught(bsn: str, position: int) -> None:
    swapped = bsn[:position] + bsn[position + 1] + bsn[position] + bsn[position + 2 :]
    assert swapped == bsn or not is_valid_bsn(swapped)
