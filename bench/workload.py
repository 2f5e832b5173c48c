"""What the benchmark writes, and the Subscriptions that match it.

Every Patient written carries `urn:bench|<n>` (unique) and, for the
subscription phases, one tag identifier such as `urn:bench:group|g7`.
Subscriptions ask for exactly one tag (`Patient?identifier=urn:bench:group|g7`),
ten per tag, so a write matches the ten of its tag and none of the others, however
many there are; writes cycle through the tags, so every Subscription is a live
one that some writes match. That is the worst honest case for the hub's index:
every Subscription is on the same resource type and the same search parameter.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import httpx

SUBSCRIPTIONS_PER_TAG = 10
GROUP = "urn:bench:group"


def patient(number: int, *, gender: str = "unknown", tag: tuple[str, str] | None = None) -> bytes:
    identifiers = [{"system": "urn:bench", "value": str(number)}]
    if tag is not None:
        identifiers.append({"system": tag[0], "value": tag[1]})
    return json.dumps(
        {"resourceType": "Patient", "identifier": identifiers, "gender": gender}
    ).encode()


def group_tag(group: int) -> tuple[str, str]:
    return GROUP, f"g{group}"


def criteria(tag: tuple[str, str]) -> str:
    return f"Patient?identifier={tag[0]}|{tag[1]}"


def subscription(criteria: str, endpoint: str) -> dict[str, Any]:
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "bench",
        "criteria": criteria,
        "channel": {"type": "rest-hook", "endpoint": endpoint},
    }


async def subscribe(client: httpx.AsyncClient, criteria: str, endpoint: str) -> dict[str, Any]:
    """Create a Subscription through the API; the resource as the hub stored it."""
    response = await client.post("/Subscription", json=subscription(criteria, endpoint))
    if response.status_code != 201:
        raise SystemExit(f"bench: Subscription refused ({response.status_code}): {response.text}")
    stored: dict[str, Any] = response.json()
    return stored


def group_specs(groups: range, endpoints: Sequence[str]) -> list[tuple[str, str]]:
    """`(criteria, endpoint)` of every Subscription of these groups, endpoints in turn."""
    specs = []
    for group in groups:
        for member in range(SUBSCRIPTIONS_PER_TAG):
            number = group * SUBSCRIPTIONS_PER_TAG + member
            specs.append((criteria(group_tag(group)), endpoints[number % len(endpoints)]))
    return specs
