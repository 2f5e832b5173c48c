"""One FHIR interaction in progress: who asks, what for, and what its AuditEvent names.

The API layer makes an `Exchange` per request, the request's context, and
replaces it (`dataclasses.replace`) with one that carries the caller's
`Access` once the token is verified; nothing changes it afterwards. An
interaction returns an `Audit` with its result: the entities it touched, and
whether it already recorded its AuditEvent inside its own unit of work (a
write). `finish` records the AuditEvent of a success that did not, `fail` the
one of a refused or failed request, through the group-committing `AuditWriter`,
before the response leaves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from hub import metrics
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
    lenient: bool = False  # asked for: a search then takes codes outside a required binding

    @classmethod
    def parse(cls, header: str | None) -> Prefer:
        return_: ReturnPreference = "representation"
        strict = lenient = False
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
                strict, lenient = value == "strict", value == "lenient"
        return cls(return_, strict, lenient)


@dataclass(frozen=True)
class Audit:
    """What a successful interaction's AuditEvent names.

    `recorded` is True when the interaction appended its AuditEvent itself, inside
    its own unit of work (a write); the API then records nothing more.
    """

    entities: tuple[Entity, ...] = ()
    recorded: bool = False


@dataclass(frozen=True)
class Exchange:
    """The context of one request: where, which interaction, who asks (once authenticated)."""

    runtime: Runtime
    domain: str
    interaction: str  # a restful-interaction code: create, read, search-type, ...
    trace: TraceIds
    client_address: str | None
    rtype: str | None = None
    prefer: Prefer = field(default_factory=Prefer)
    access: Access | None = None

    @property
    def caller(self) -> Caller | None:
        return self.access.caller if self.access is not None else None

    def authorised(self) -> Access:
        """The caller's rights; the API authenticates before any interaction runs."""
        if self.access is None:
            raise forbidden()
        return self.access

    def audit_event(
        self, status: int, entities: Sequence[Entity], description: str | None = None
    ) -> dict[str, object]:
        """This request's REST AuditEvent, naming `entities`."""
        caller = self.caller
        return rest_event(
            interaction=self.interaction,
            status=status,
            outcome_description=description,
            caller_device=caller.client_id if caller is not None else None,
            hub_device=HUB_DEVICE,
            site=self.runtime.settings.site,
            trace=self.trace,
            entities=entities,
            recorded=utcnow(),
        )

    async def finish(self, status: int, audit: Audit) -> None:
        """Audit a successful interaction, unless it recorded its AuditEvent in its own unit."""
        if not audit.recorded:
            await self.runtime.audit.record(self.domain, self.audit_event(status, audit.entities))
        else:  # committed with the write; the writer counts the events it stores itself
            metrics.audit_events(self.domain)

    async def fail(self, error: FhirError, entities: Sequence[Entity] = ()) -> None:
        """Audit a refused or failed interaction (outcome 4 or 8, with the reason).

        `entities` are what the request asked for: the interaction's own result never came.
        """
        await self.runtime.audit.record(
            self.domain, self.audit_event(error.status, entities, error.text)
        )
