from __future__ import annotations

import uuid

import pytest

from hub import trace


def test_missing_ids_are_made_and_given_ones_kept() -> None:
    made = trace.from_headers(None, None, None)
    assert uuid.UUID(made.request_id).version == 4
    assert uuid.UUID(made.trace_id).version == 4
    assert made.correlation_id is None

    kept = trace.from_headers("epd100", "fhir200", "trace.123")
    assert (kept.request_id, kept.correlation_id, kept.trace_id) == (
        "epd100",
        "fhir200",
        "trace.123",
    )


def test_an_empty_header_counts_as_absent() -> None:
    ids = trace.from_headers("", "", " ")
    assert ids.correlation_id is None
    assert ids.request_id and ids.trace_id


@pytest.mark.parametrize(
    ("position", "value"),
    [(0, "has space"), (1, "x" * 65), (2, "semi;colon"), (0, "ünicode")],
)
def test_malformed_ids_are_refused_naming_the_header(position: int, value: str) -> None:
    headers: list[str | None] = [None, None, None]
    headers[position] = value
    with pytest.raises(trace.InvalidTraceHeader) as raised:
        trace.from_headers(*headers)
    assert raised.value.header == trace.TRACE_HEADERS[position]


def test_sixty_four_characters_are_allowed() -> None:
    assert trace.from_headers("a" * 64, None, None).request_id == "a" * 64


def test_get_outside_a_request_makes_fresh_ids() -> None:
    assert trace.get().request_id != trace.get().request_id
