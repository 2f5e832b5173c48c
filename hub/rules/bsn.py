"""The Dutch citizen service number (burgerservicenummer, BSN) and its eleven-test.

A BSN is written as exactly nine ASCII digits. Old numbers of eight digits exist and
are conventionally written with a leading zero; we accept only the nine-digit form, so
a patient has one spelling and lookups by BSN cannot miss on "12345672" versus
"012345672". Callers that want to be helpful can suggest `"0" + value` when
`is_valid_bsn("0" + value)` holds (the notification rules do).
"""

from __future__ import annotations

BSN_SYSTEM = "http://fhir.nl/fhir/NamingSystem/bsn"

BSN_LENGTH = 9

# The eleven-test ("elfproef") weights: 9 down to 2 for the first eight digits and -1
# for the check digit. The weighted sum of a valid BSN is a multiple of 11.
_WEIGHTS = (9, 8, 7, 6, 5, 4, 3, 2, -1)


def is_valid_bsn(value: str) -> bool:
    """True when `value` is nine ASCII digits, not all zero, that pass the eleven-test."""
    # str.isdigit() alone would accept other scripts' digits ("١٢٣"), hence isascii().
    if len(value) != BSN_LENGTH or not (value.isascii() and value.isdigit()):
        return False
    if value == "0" * BSN_LENGTH:
        return False
    weighted_sum = sum(int(digit) * weight for digit, weight in zip(value, _WEIGHTS, strict=True))
    return weighted_sum % 11 == 0
