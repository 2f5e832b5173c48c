"""Large request bodies are parsed, checked and indexed off the event loop.

A 10 MB resource costs seconds of CPU (JSON, the model check, the search index); on the
event loop that would stall every other request of the process for as long. Bodies above
`LARGE_BODY` bytes are therefore worked on in a thread, one at a time per process
(`Runtime.heavy_work`): the interpreter lock is then shared between that one thread and
the loop, which keeps answering. Smaller bodies stay on the loop, where their work costs
less than the hand-off to a thread would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from hub.runtime import Runtime

# 256 kB: about 25 ms of work at the hub's per-byte cost, far beyond any ordinary resource.
LARGE_BODY = 256 * 1024

P = ParamSpec("P")
T = TypeVar("T")


async def cpu_bound(
    runtime: Runtime, size: int, work: Callable[P, T], *args: P.args, **kwargs: P.kwargs
) -> T:
    """`work(*args, **kwargs)`, in a thread when it is about a body of more than `LARGE_BODY`."""
    if size <= LARGE_BODY:
        return work(*args, **kwargs)
    async with runtime.heavy_work:
        return await asyncio.to_thread(work, *args, **kwargs)
