"""Access decisions for one request, and for a subscriber at notification time.

A right is granted only when BOTH the current configuration (the matrix and
apps file as loaded now, so a revoked right takes effect at once) and the
caller's token scope allow it: a token never carries more than its scope,
and an old token never outlives a revocation.
"""

from __future__ import annotations

from dataclasses import dataclass

from hub.access.apps import Snapshot
from hub.access.matrix import Action, Scopes
from hub.fhir.outcome import FhirError, forbidden


@dataclass(frozen=True)
class Caller:
    """An authenticated application: its domain, client_id (= Device id) and token scopes."""

    domain: str
    client_id: str
    token_scopes: Scopes


def role_scopes(snapshot: Snapshot, domain: str, client_id: str) -> Scopes | None:
    """What the app's role grants it now; None when the app is no longer registered."""
    return snapshot.scopes_of(domain, client_id)


def _intersect(a: frozenset[str] | None, b: frozenset[str] | None) -> frozenset[str] | None:
    if a is None:
        return b
    if b is None:
        return a
    return a & b


@dataclass(frozen=True)
class Access:
    """The rights of one caller, fixed for the duration of one request."""

    caller: Caller
    granted: Scopes  # from the current configuration
    role: str  # the app's role in the matrix, named when a right is refused

    def refusal(self, interaction: str, target: str, why: str | None = None) -> FhirError:
        """403 naming the role, the interaction it does not allow and its target.

        `interaction` is a restful-interaction code (`update`, `search-type`, ...);
        `target` a type or `Type/id`. The text is the OperationOutcome's and so the
        AuditEvent's `outcomeDesc`: an integrator and an auditor both see what to ask for.
        """
        text = f"Access denied: the role {self.role!r} does not allow {interaction!r} on {target}"
        return forbidden(f"{text}: {why}" if why else text)

    def allows(self, action: Action, rtype: str, origin: str | None) -> bool:
        return self.granted.allows(action, rtype, origin) and self.caller.token_scopes.allows(
            action, rtype, origin
        )

    def may_create(self, rtype: str) -> bool:
        # The hub stamps the caller as origin, so that is the origin to check.
        return self.allows("create", rtype, self.caller.client_id)

    def origins(self, action: Action, rtype: str) -> frozenset[str] | None:
        """Origins `action` is allowed for: None = any, empty = none (search narrowing)."""
        return _intersect(
            self.granted.origins(action, rtype), self.caller.token_scopes.origins(action, rtype)
        )

    def may_search(self, rtype: str) -> bool:
        origins = self.origins("search", rtype)
        return origins is None or bool(origins)

    def readable_origins(self, rtype: str) -> frozenset[str] | None:
        """Origins of `rtype` the caller may read: None = any, empty = none.

        A chained search looks into the referenced resources, so it only sees
        those the caller may read (`Task?instantiates.publisherId=x` must not
        tell anything about an ActivityDefinition the caller cannot read).
        """
        return self.origins("read", rtype)


def subscriber_may_read(
    snapshot: Snapshot, domain: str, subscriber: str, rtype: str, origin: str | None
) -> bool:
    """May the app that owns a Subscription read this resource, per the current configuration?"""
    granted = role_scopes(snapshot, domain, subscriber)
    return granted is not None and granted.allows("read", rtype, origin)


def subscriber_origins(
    snapshot: Snapshot, domain: str, subscriber: str, rtype: str
) -> frozenset[str] | None:
    """Origins of `rtype` the app that owns a Subscription may read now: None = any, empty = none.

    The counterpart of `Access.readable_origins` for chained criteria, per the
    current configuration (an app no longer registered may read nothing).
    """
    granted = role_scopes(snapshot, domain, subscriber)
    return frozenset() if granted is None else granted.origins("read", rtype)
