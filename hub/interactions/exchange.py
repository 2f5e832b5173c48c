"""One FHIR interaction in progress: who asks, what for, and what it touched.

The API layer makes an `Exchange` per request; the interaction fills in the
entities it touched; `finish` / `fail` record the AuditEvent. A write records
its AuditEvent inside its own transaction (and sets `audited`); everything
else is recorded through the group-committing `AuditWriter` before the
response leaves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from hub.access.policy import Access, Caller
from hub.audit.events import Entity, rest_event
from hub.fhir.outcome import FhirError, forbidden
from hub.runtime import HUB_DEVICE, Runtime, utcnow
from hub.trace import TraceIds

ReturnPreference = Literal["minimal", "representation", "OperationOutcome"]


@dataclass(frozen=True)
class Prefer:
    """The parts of the `Prefer` header (RFC 7240) that FHIR defines."""

    return_: ReturnPreference = "representation"
    strict: bool = False

    @classmethod
    def parse(cls, header: str | None) -> Prefer:
        return_: ReturnPreference = "representation"
        strict = False
        for part in (header or "").replace(";", ",").split(","):
            name, _, value = part.strip().partition("=")
            value = value.strip().strip('"')
            if name.strip().lower() == "return" and value in (
                "minimal",
                "representation",
                "OperationOutcome",
            ):
                return_ = value  # type: ignore[assignment]
            elif name.strip().lower() == "handling":
                strict = value == "strict"
        return cls(return_, strict)


@dataclass
class Exchange:
    runtime: Runtime
    domain: str
    interaction: str  # a restful-interaction code: create, read, search-type, ...
    trace: TraceIds
    client_address: str | None
    rtype: str | None = None
    prefer: Prefer = field(default_factory=Prefer)
    access: Access | None = None
    entities: list[Entity] = field(default_factory=list)
    # Facts about the written resource for its AuditEvent (entity.detail), e.g. patient-notice.
    details: list[tuple[str, str]] = field(default_factory=list)
    audited: bool = False

    @property
    def caller(self) -> Caller | None:
        return self.access.caller if self.access is not None else None

    def authorised(self) -> Access:
        """The caller's rights; the API authenticates before any interaction runs."""
        if self.access is None:
            raise forbidden()
        return self.access

    def audit_event(self, status: int, description: str | None = None) -> dict[str, object]:
        caller = self.caller
        return rest_event(
            interaction=self.interaction,
            status=status,
            outcome_description=description,
            caller_device=caller.client_id if caller is not None else None,
            client_address=self.client_address,
            hub_device=HUB_DEVICE,
            site=self.runtime.settings.site,
            trace=self.trace,
            entities=self.entities,
            recorded=utcnow(),
        )

    async def finish(self, status: int) -> None:
        """Audit a successful interaction that did not audit itself in its transaction."""
        if not self.audited:
            await self.runtime.audit.record(self.domain, self.audit_event(status))
            self.audited = True

    async def fail(self, error: FhirError) -> None:
        """Audit a refused or failed interaction (outcome 4 or 8, with the reason)."""
        self.audited = False
        await self.runtime.audit.record(self.domain, self.audit_event(error.status, error.text))
        self.audited = True
