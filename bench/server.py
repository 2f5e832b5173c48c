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

from hub.app import create_app
from hub.audit.writer import AuditWriter
from hub.runtime import Runtime


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
    uvicorn.run(
        bench_app(audit=not args.no_audit),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        server_header=False,
    )


if __name__ == "__main__":
    main()
