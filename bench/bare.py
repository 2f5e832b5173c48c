"""The floor under the hub's creates: `python -m bench.bare --port P --database FILE`.

A Starlette app on uvicorn, as the hub is, that does the least a durable create
can do: one INSERT of the request body into a WAL SQLite file (stdlib
`sqlite3`, `synchronous=NORMAL` as the hub sets it, a commit per request) and
the body back with 201. No parsing, no validation, no access control, no index,
no audit. Measured on the same machine in the same run, with the same clients
and the same request bodies, it says how fast this machine can go at all; the
hub's creates/s over its requests/s is a ratio that survives a slower or busier
machine better than absolute numbers do.

The INSERT runs on the event loop, without a thread hand-off: with
`synchronous=NORMAL` a WAL commit does not wait for the disk, so it is a few
tens of microseconds and a thread would cost more than it saves.
"""

from __future__ import annotations

import argparse
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def bare_app(database: Path) -> Starlette:
    connection: sqlite3.Connection | None = None

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nonlocal connection
        connection = sqlite3.connect(database)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute(
            "CREATE TABLE IF NOT EXISTS bodies (id INTEGER PRIMARY KEY, body BLOB NOT NULL)"
        )
        connection.commit()
        try:
            yield
        finally:
            connection.close()

    async def create(request: Request) -> Response:
        body = await request.body()
        assert connection is not None
        connection.execute("INSERT INTO bodies (body) VALUES (?)", (body,))
        connection.commit()
        return Response(body, status_code=201, media_type="application/json")

    async def ready(request: Request) -> Response:
        return Response(status_code=200)

    routes = [Route("/readyz", ready), Route("/{path:path}", create, methods=["POST"])]
    return Starlette(routes=routes, lifespan=lifespan)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bare")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--database", type=Path, required=True)
    args = parser.parse_args()
    # The same server settings as `bench.server` runs the hub with.
    uvicorn.run(
        bare_app(args.database),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        server_header=False,
    )


if __name__ == "__main__":
    main()
