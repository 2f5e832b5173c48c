"""The hub under benchmark: `python -m bench.server --port P [--no-audit]`.

Settings come from `HUB_*` variables, as for `hub serve`. `--no-audit` exists
only here: it swaps the running hub's `AuditWriter` for one that drops the
events of reads, so the benchmark can show what auditing costs. It is not a
setting and the hub itself has no way to switch auditing off.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from starlette.applications import Starlette

from hub import logs
from hub.api.connections import GuardedHttpToolsProtocol
from hub.app import create_app
from hub.audit.writer import AuditWriter
from hub.runtime import Runtime
from hub.settings import Settings


class DroppingAuditWriter(AuditWriter):
    """Accepts every event and stores none: the cost of a read without its audit."""

    async def record(self, domain: str, event: dict[str, Any]) -> None:
        return None


def bench_app(*, audit: bool) -> Starlette:
    app = create_app()
    if audit:
        return app
    hub_lifespan = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[Any]:
        async with hub_lifespan(app) as state:
            runtime: Runtime = app.state.runtime
            runtime.audit = DroppingAuditWriter(runtime.database, runtime.chain_key)
            yield state

    app.router.lifespan_context = lifespan
    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.server")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--no-audit", action="store_true")
    args = parser.parse_args()
    app = bench_app(audit=not args.no_audit)
    settings: Settings = app.state.settings
    # As `hub serve` runs it: the connection guard, and the hub's log lines at the
    # operator's level (info: an access line per request), whose cost is the product's.
    # `bench.hubs` sends them to a file, not into the report.
    uvicorn.run(
        app,
        http=GuardedHttpToolsProtocol,
        host="127.0.0.1",
        port=args.port,
        log_level=settings.log_level,
        server_header=False,
        log_config=logs.dict_config(settings.log_level, settings.log_format),
    )


if __name__ == "__main__":
    main()
