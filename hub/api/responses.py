"""FHIR HTTP responses: content types, the OperationOutcome error body, ETag and friends."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.responses import Response

from hub.fhir import jsonio
from hub.fhir.outcome import FhirError

FHIR_JSON = "application/fhir+json"
PLAIN_JSON = "application/json"


class FhirResponse(Response):
    """A JSON response; the body is a dict, or JSON text already assembled (Bundles)."""

    media_type = FHIR_JSON

    def __init__(
        self,
        content: Mapping[str, Any] | str | None,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str = FHIR_JSON,
    ) -> None:
        super().__init__(content, status_code, headers, f"{media_type}; charset=utf-8")

    def render(self, content: Any) -> bytes:
        if content is None:
            return b""
        text = content if isinstance(content, str) else jsonio.dumps(content)
        return text.encode("utf-8")


def error_response(error: FhirError, media_type: str = FHIR_JSON) -> FhirResponse:
    return FhirResponse(error.outcome(), error.status, error.headers, media_type)
