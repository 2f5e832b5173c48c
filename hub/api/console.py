"""The delivery console: static pages at `/{domain}/console/`, shipped in the package.

The files (`hub/console/`: HTML, JavaScript, CSS; no build step, nothing from a CDN)
hold no data and need no token to fetch. The page asks the operator for an access
token and uses the domain's own FHIR API with it (`$status`, `$resend`, AuditEvent
search, `$chain-head`), so it sees and does exactly what that token may. A strict
Content-Security-Policy allows the page's own files and requests only, so even a
mistake in escaping could not run a script from elsewhere or send data away.
"""

from __future__ import annotations

from starlette.responses import PlainTextResponse
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

from hub.runtime import Runtime

SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


class Console:
    """The console's files under a known domain, with the security headers."""

    def __init__(self) -> None:
        self.files = StaticFiles(packages=[("hub", "console")], html=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime: Runtime = scope["app"].state.runtime
        domain = scope["path_params"]["domain"]
        if domain not in runtime.access.registry.domains:
            await PlainTextResponse(f"Unknown domain {domain!r}", 404)(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (name, value)
                    for name, value in message.get("headers", [])
                    if name.decode("latin-1").lower() not in SECURITY_HEADERS
                ]
                headers += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                message = {**message, "headers": headers}
            await send(message)

        await self.files(scope, receive, with_headers)


routes = [Mount("/{domain}/console", app=Console(), name="console")]
