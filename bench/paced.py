"""Open-loop load: requests sent on a fixed schedule, whatever the answers do.

`bench.load.hammer` is closed-loop (each client waits for its answer before the
next request), so a slow hub slows its own load and hides its latency. Here
request `i` leaves at `start + i / rate` on whichever connection is idle (a new
one when none is, up to `connections`), as many independent applications would
send; how late each request actually left is kept, so a report can show whether
the schedule was held.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from bench.load import Connection

# An idle connection older than this is not reused (uvicorn's keep-alive timeout is 5 s).
_FRESH_SECONDS = 3.0

# (method, path with query, body, headers of this request) of request `i`.
PacedRequest = tuple[str, str, bytes, Mapping[str, str]]


@dataclass(frozen=True)
class Sent:
    number: int
    lag: float  # seconds the request left after its scheduled time
    seconds: float  # until its answer arrived
    status: int
    body: bytes


async def paced(
    host: str,
    port: int,
    headers: Mapping[str, str],
    make: Callable[[int], PacedRequest],
    *,
    rate: float,
    seconds: float,
    connections: int = 256,
) -> list[Sent]:
    """Send `rate * seconds` requests at `rate` per second; every answer, in order.

    A hub that falls behind makes requests pile up; beyond `connections` in flight
    the next ones wait for a free connection (and their lag shows it) rather than
    open sockets without end.
    """
    loop = asyncio.get_running_loop()
    # Idle connections with when they were last used: uvicorn closes one that idles for
    # its keep-alive timeout (5 s), and a request sent on it then finds it closed.
    idle: list[tuple[Connection, float]] = []
    opened: list[Connection] = []
    free = asyncio.Semaphore(connections)
    start = loop.time() + 0.05

    async def send(number: int, scheduled: float) -> Sent:
        async with free:
            connection = None
            while idle and connection is None:
                candidate, used = idle.pop()
                if loop.time() - used < _FRESH_SECONDS:
                    connection = candidate
            if connection is None:
                connection = Connection(host, port, headers)
                opened.append(connection)
            began = loop.time()
            method, path, body, extra = make(number)
            status, answer = await connection.request(method, path, body, extra)
            idle.append((connection, loop.time()))
        return Sent(number, began - scheduled, loop.time() - began, status, answer)

    tasks: list[asyncio.Task[Sent]] = []
    try:
        for number in range(round(rate * seconds)):
            scheduled = start + number / rate
            delay = scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(number, scheduled)))
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        for connection in opened:
            await connection.close()
