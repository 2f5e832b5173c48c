"""A search whose client has gone away is cancelled, and with it its database statement.

Starlette runs an endpoint to its end whether or not anyone still waits for the answer:
a client that sends a costly search and hangs up would leave the query running, and ten
of them would hold the database's connections for everyone. `while_connected` runs the
work beside a watch on the connection; when the server reports the disconnect first, the
work is cancelled (`hub.store.db.Database.read` then cancels the statement in flight) and
a 499 `FhirError` is raised for the API to audit.

Only for work that reads: a write, once begun, runs to its commit or its refusal.
The request body must have been read before: the watch consumes the ASGI messages.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

from starlette.requests import Request

from hub.fhir.outcome import FhirError

T = TypeVar("T")

# The status nginx made the name for "the client closed the request"; the hub only
# records it on the AuditEvent: nobody is left to read it.
CLIENT_CLOSED_REQUEST = 499


def client_gone() -> FhirError:
    return FhirError.single(
        CLIENT_CLOSED_REQUEST,
        "incomplete",
        "The client closed the connection before the answer; the search was cancelled",
    )


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def while_connected(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """`work`'s result; cancelled, raising the 499 `FhirError`, if the client goes first."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((task, watch), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watch.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    raise client_gone()
