"""Index values are clipped in BYTES of UTF-8, never inside a character.

PostgreSQL limits a whole b-tree entry to 2,704 bytes; the index values are
clipped to MAX_* bytes so that the widest entry fits, and query values are
clipped the same way, so search and subscription matching still agree.
"""

from __future__ import annotations

from typing import Any

import pytest

from hub.fhir.extract import MAX_CODE, MAX_NORM, MAX_URL, clip, extract, normalize, reference_row
from hub.fhir.match import matches, unrestricted
from hub.fhir.query import parse_criteria

# One character of each UTF-8 width.
WIDTHS = {"ascii": "a", "2-byte": "é", "3-byte": "中", "4-byte": "😀"}
BTREE_LIMIT = 2704
# domain (≤ 64 chars of [a-z0-9-]), rtype and param: ASCII, 64 each at most.
OTHER_COLUMNS = 3 * 64


def _bytes(text: str | None) -> int:
    return len((text or "").encode("utf-8"))


@pytest.mark.parametrize("char", WIDTHS.values(), ids=WIDTHS.keys())
@pytest.mark.parametrize("limit", [MAX_CODE, MAX_URL, MAX_NORM, 1, 2, 3, 4, 5])
@pytest.mark.parametrize("delta", [-5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5])
def test_clip_keeps_whole_characters_within_the_limit(char: str, limit: int, delta: int) -> None:
    width = _bytes(char)
    for prefix in ("", "x", "xy", "xyz"):  # every alignment of the characters to the limit
        text = prefix + char * max(0, (limit + delta) // width)
        if not text:
            continue
        clipped = clip(text, limit)
        assert clipped is not None
        assert text.startswith(clipped)
        assert _bytes(clipped) <= limit
        if _bytes(text) <= limit:
            assert clipped == text
        else:  # the longest prefix that fits: one more character would not
            assert _bytes(text[: len(clipped) + 1]) > limit
        clipped.encode("utf-8")  # never half a character


def test_clip_exactly_at_the_limit() -> None:
    assert clip("中" * 4, 12) == "中" * 4
    assert clip("中" * 4, 11) == "中" * 3
    assert clip("中" * 4, 10) == "中" * 3
    assert clip("中" * 4, 9) == "中" * 3
    assert clip("a" + "😀" * 2, 8) == "a😀"
    assert clip("a" + "😀" * 2, 9) == "a😀😀"
    assert clip("é" * 3, 5) == "éé"
    assert clip("é" * 3, 6) == "ééé"
    assert clip("a" * 10, 10) == "a" * 10
    assert clip("a" * 11, 10) == "a" * 10


def test_clip_of_nothing_is_none() -> None:
    assert clip(None, 10) is None
    assert clip("", 10) is None


def test_clip_keeps_a_lone_surrogate_whole() -> None:
    text = "a" * 9 + "\ud800" + "b"
    assert clip(text, 11) == "a" * 9
    assert clip(text, 12) == "a" * 9 + "\ud800"


def test_normalize_is_clipped_in_bytes() -> None:
    assert _bytes(normalize("中" * 1000)) <= MAX_NORM
    assert normalize("中" * 1000) == "中" * (MAX_NORM // 3)
    assert normalize("x" * 2000) == "x" * MAX_NORM


def test_the_widest_index_entry_fits_a_postgresql_btree() -> None:
    # ix_idx_token_lookup: domain, rtype, param, code, system (plus tuple and length headers).
    assert OTHER_COLUMNS + 2 * MAX_CODE + 64 < BTREE_LIMIT
    assert OTHER_COLUMNS + MAX_URL + 64 < BTREE_LIMIT
    assert OTHER_COLUMNS + MAX_NORM + 64 < BTREE_LIMIT


def _patient(**fields: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": "p1", **fields}


LONG = "中" * 3000  # 9,000 bytes


def test_every_indexed_value_of_a_long_multi_byte_resource_fits() -> None:
    patient = _patient(
        identifier=[{"system": f"urn:{LONG}", "value": LONG}],
        name=[{"family": LONG}],
        generalPractitioner=[{"reference": f"http://x/{LONG}"}],
    )
    values = extract(patient)
    [token] = [row for row in values.tokens if row.param == "identifier"]
    assert _bytes(token.code) <= MAX_CODE and _bytes(token.system) <= MAX_CODE
    assert all(_bytes(row.norm) <= MAX_NORM for row in values.strings)
    assert all(_bytes(row.url) <= MAX_URL for row in values.references)
    for row in values.uris:
        assert _bytes(row.value) <= MAX_URL


def test_a_reference_type_longer_than_any_resource_type_is_not_a_target() -> None:
    row = reference_row("subject", "A" + "a" * 100 + "/x")
    assert row is None
    row = reference_row("subject", "http://x/A" + "a" * 100 + "/x")
    assert row is not None and row.ref_type is None and row.url is not None


@pytest.mark.parametrize(
    "query",
    [
        f"identifier={LONG}",
        f"identifier=urn:{LONG}|{LONG}",
        f"family={LONG}",
        f"family={LONG[:1000]}",  # a prefix longer than the index keeps
        f"family:exact={LONG}",
        f"name={LONG}",
        f"general-practitioner=http://x/{LONG}",
    ],
    ids=["code", "system|code", "string", "string-prefix", "exact", "name", "url"],
)
def test_matching_agrees_on_clipped_values(query: str) -> None:
    patient = _patient(
        identifier=[{"system": f"urn:{LONG}", "value": LONG}],
        name=[{"family": LONG}],
        generalPractitioner=[{"reference": f"http://x/{LONG}"}],
    )
    criteria = parse_criteria(f"Patient?{query}")
    assert matches(
        criteria, patient, extract(patient), resolve=lambda *_: None, readable=unrestricted
    )
    other = _patient(identifier=[{"value": "中"}], name=[{"family": "中"}])
    assert not matches(
        criteria, other, extract(other), resolve=lambda *_: None, readable=unrestricted
    )
