"""Koppeltaal trace identifiers (TOP-KT-011): X-Request-Id, X-Correlation-Id, X-Trace-Id.

The API layer reads (or makes) them once per request and puts them in a
context variable, so every layer below — audit, the outbox, logging — sees
the same values without passing them through every call.
"""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar
from dataclasses import dataclass

REQUEST_ID = "X-Request-Id"
CORRELATION_ID = "X-Correlation-Id"
TRACE_ID = "X-Trace-Id"
TRACE_HEADERS = (REQUEST_ID, CORRELATION_ID, TRACE_ID)

# They end up in AuditEvent extensions of FHIR type `id`.
_VALID = re.compile(r"[A-Za-z0-9\-\.]{1,64}")


@dataclass(frozen=True)
class TraceIds:
    request_id: str
    trace_id: str
    correlation_id: str | None = None

    @classmethod
    def new(cls, *, correlation_id: str | None = None, trace_id: str | None = None) -> TraceIds:
        """Ids for a request the hub itself starts (e.g. a notification)."""
        return cls(new_id(), trace_id or new_id(), correlation_id)


def new_id() -> str:
    return str(uuid.uuid4())


def is_valid(value: str) -> bool:
    return _VALID.fullmatch(value) is not None


class InvalidTraceHeader(ValueError):
    def __init__(self, header: str, value: str) -> None:
        super().__init__(
            f"{header} must be 1 to 64 characters of A-Z, a-z, 0-9, '-' and '.'; got {value[:80]!r}"
        )
        self.header = header


def from_headers(
    request_id: str | None, correlation_id: str | None, trace_id: str | None
) -> TraceIds:
    """Take the caller's trace ids, make the missing ones, refuse malformed ones.

    An empty header counts as absent: Koppeltaal sends an empty X-Correlation-Id
    when a request has no cause.
    """
    request_id, correlation_id, trace_id = (
        value.strip() or None if value is not None else None
        for value in (request_id, correlation_id, trace_id)
    )
    for header, value in zip(TRACE_HEADERS, (request_id, correlation_id, trace_id), strict=True):
        if value is not None and not is_valid(value):
            raise InvalidTraceHeader(header, value)
    return TraceIds(
        request_id=request_id or new_id(),
        trace_id=trace_id or new_id(),
        correlation_id=correlation_id,
    )


current: ContextVar[TraceIds | None] = ContextVar("hub_trace_ids", default=None)


def get() -> TraceIds:
    """The trace ids of the request being handled (fresh ones outside a request)."""
    ids = current.get()
    return ids if ids is not None else TraceIds.new()
