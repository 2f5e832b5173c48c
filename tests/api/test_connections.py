"""The connection guard's bookkeeping; its HTTP behaviour is in test_slow_and_large_requests."""

from __future__ import annotations

import json

from hub.api.connections import ConnectionGuard, ConnectionLimits, refusal


def test_an_address_is_admitted_up_to_its_limit_and_freed_as_it_closes() -> None:
    guard = ConnectionGuard(ConnectionLimits(per_address=2))
    assert guard.admit("10.0.0.1") and guard.admit("10.0.0.1")
    assert not guard.admit("10.0.0.1")
    assert guard.admit("10.0.0.2")  # another address has its own count
    guard.release("10.0.0.1")
    assert guard.admit("10.0.0.1")
    guard.release("10.0.0.1")
    guard.release("10.0.0.1")
    guard.release("10.0.0.2")
    assert not guard.open  # nothing remembered of closed connections


def test_zero_means_no_limit_and_unknown_addresses_are_not_counted() -> None:
    guard = ConnectionGuard(ConnectionLimits(per_address=0))
    assert all(guard.admit("10.0.0.1") for _ in range(1000))
    bounded = ConnectionGuard(ConnectionLimits(per_address=1))
    assert bounded.admit(None) and bounded.admit(None)
    assert not bounded.open


def test_a_refusal_is_a_complete_response_that_closes_the_connection() -> None:
    raw = refusal(429, "throttled", "Too many connections")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 429 Too Many Requests\r\n")
    assert b"connection: close" in head and b"retry-after: 1" in head
    assert f"content-length: {len(body)}".encode() in head
    assert json.loads(body)["issue"][0]["diagnostics"] == "Too many connections"
