"""The portal's side of the hub: a SMART backend-services client of one domain.

It finds the token endpoint through SMART discovery, signs a client assertion with
the portal's private key for each token (RFC 7523), and sends every FHIR request with
Koppeltaal trace headers: a fresh X-Request-Id, and X-Correlation-Id / X-Trace-Id when
the request follows from a notification.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from hub.access.assertion import CLIENT_ASSERTION_TYPE, make_client_assertion

FHIR_JSON = "application/fhir+json"
# Renew this long before the token runs out, so no request goes out with a dying token.
_TOKEN_MARGIN_SECONDS = 60


class HubError(Exception):
    """The hub answered something the portal cannot use."""


@dataclass(frozen=True)
class Trace:
    """Where requests sit in a Koppeltaal trace (TOP-KT-011); `sent` keeps their ids."""

    trace_id: str | None = None
    correlation_id: str | None = None
    sent: list[str] = field(default_factory=list, compare=False)

    def headers(self) -> dict[str, str]:
        """The trace headers of one more request (with a new X-Request-Id)."""
        self.sent.append(str(uuid.uuid4()))
        headers = {"X-Request-Id": self.sent[-1]}
        if self.correlation_id:
            headers["X-Correlation-Id"] = self.correlation_id
        if self.trace_id:
            headers["X-Trace-Id"] = self.trace_id
        return headers


class HubClient:
    def __init__(
        self,
        fhir_base: str,
        *,
        client_id: str,
        private_key: bytes,
        kid: str,
        verify: Any = True,
    ) -> None:
        self.fhir_base = fhir_base.rstrip("/")
        self.client_id = client_id
        self._private_key = private_key
        self._kid = kid
        self._http = httpx.AsyncClient(timeout=15, verify=verify, headers={"Accept": FHIR_JSON})
        self._token_url: str | None = None
        self._token: str | None = None
        self._token_until = 0.0

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- authentication ---------------------------------------------------------------

    async def _access_token(self, *, renew: bool = False) -> str:
        if self._token is not None and not renew and time.monotonic() < self._token_until:
            return self._token
        if self._token_url is None:
            discovery = await self._http.get(f"{self.fhir_base}/.well-known/smart-configuration")
            self._token_url = str(_json(discovery, 200)["token_endpoint"])
        assertion = make_client_assertion(
            self._private_key, client_id=self.client_id, token_url=self._token_url, kid=self._kid
        )
        response = await self._http.post(
            self._token_url,
            data={
                "grant_type": "client_credentials",
                "client_assertion_type": CLIENT_ASSERTION_TYPE,
                "client_assertion": assertion,
            },
        )
        body = _json(response, 200)
        self._token = str(body["access_token"])
        lifetime = float(body.get("expires_in", 300))
        self._token_until = time.monotonic() + max(lifetime - _TOKEN_MARGIN_SECONDS, 0)
        return self._token

    # -- FHIR -------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        url: str,
        *,
        trace: Trace,
        params: Sequence[tuple[str, str]] | None = None,
        json: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """One FHIR request (`url` relative to the FHIR base, or absolute, e.g. a paging link)."""
        target = url if url.startswith(("http://", "https://")) else f"{self.fhir_base}/{url}"
        for renew in (False, True):
            token = await self._access_token(renew=renew)
            response = await self._http.request(
                method,
                target,
                params=httpx.QueryParams(list(params)) if params is not None else None,
                json=json,
                headers={**trace.headers(), **(headers or {}), "Authorization": f"Bearer {token}"},
            )
            # A token may be refused before it runs out (the hub's keys rotated): once more.
            if response.status_code != 401:
                break
        return response

    async def search(
        self, resource_type: str, params: Sequence[tuple[str, str]], *, trace: Trace
    ) -> list[dict[str, Any]]:
        """Every match, following the Bundle's `next` links."""
        found: list[dict[str, Any]] = []
        response = await self.request("GET", resource_type, params=params, trace=trace)
        while True:
            bundle = _json(response, 200)
            found += [
                entry["resource"]
                for entry in bundle.get("entry", ())
                if entry.get("search", {}).get("mode", "match") == "match"
            ]
            next_url = next(
                (link["url"] for link in bundle.get("link", ()) if link["relation"] == "next"),
                None,
            )
            if next_url is None:
                return found
            response = await self.request("GET", next_url, trace=trace)

    async def read(self, resource_type: str, id: str, *, trace: Trace) -> dict[str, Any] | None:
        response = await self.request("GET", f"{resource_type}/{id}", trace=trace)
        if response.status_code in (404, 410):
            return None
        return _json(response, 200)

    async def ensure_subscription(
        self, *, endpoint: str, criteria: str, header: str, reason: str
    ) -> str:
        """Subscribe `endpoint` to `criteria`; an earlier Subscription of ours is reused.

        Reusing it (with the new `header`, the shared secret of this run) keeps one
        Subscription per endpoint across restarts instead of piling up dead ones.
        """
        trace = Trace()
        subscription: dict[str, Any] = {
            "resourceType": "Subscription",
            "status": "requested",
            "reason": reason,
            "criteria": criteria,
            "channel": {"type": "rest-hook", "endpoint": endpoint, "header": [header]},
        }
        for existing in await self.search("Subscription", [("url", endpoint)], trace=trace):
            if existing.get("criteria") == criteria:
                version = existing["meta"]["versionId"]
                response = await self.request(
                    "PUT",
                    f"Subscription/{existing['id']}",
                    json={**subscription, "id": existing["id"]},
                    headers={"If-Match": f'W/"{version}"'},
                    trace=trace,
                )
                return str(_json(response, 200)["id"])
        response = await self.request("POST", "Subscription", json=subscription, trace=trace)
        return str(_json(response, 201)["id"])


def _json(response: httpx.Response, status: int) -> dict[str, Any]:
    if response.status_code != status:
        raise HubError(
            f"{response.request.method} {response.request.url} answered "
            f"{response.status_code}: {response.text[:500]}"
        )
    body: dict[str, Any] = response.json()
    return body
