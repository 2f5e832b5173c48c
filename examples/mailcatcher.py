"""A real SMTP server on loopback that keeps every message: the demo's mail catcher.

`make demo` shows the patient e-mail it catches; the tests use it as their SMTP server.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from types import TracebackType
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session


@dataclass(frozen=True)
class CaughtMail:
    """One message as the SMTP server received it."""

    sender: str
    recipients: tuple[str, ...]
    raw: bytes

    @property
    def message(self) -> EmailMessage:
        parsed = message_from_bytes(self.raw, policy=policy.default)
        assert isinstance(parsed, EmailMessage)  # policy.default makes EmailMessage
        return parsed

    @property
    def text(self) -> str:
        """The plain-text body."""
        body = self.message.get_body(("plain",))
        # SMTP carries CRLF line ends; callers compare with ordinary text.
        return "" if body is None else str(body.get_content()).replace("\r\n", "\n")


class MailCatcher:
    """A real SMTP server (aiosmtpd) on loopback that keeps every message it accepts.

    It runs its own event loop in a thread, so neither the caller's loop nor a blocking
    caller holds it up. Give `sock` (bound, not listening) to serve on a port reserved
    earlier: until `start()`, connections to it are refused, which is how a test makes
    "the mail server is down" and then brings it back on the same address.
    `smtp_options` go to aiosmtpd's SMTP as they are: `tls_context` and
    `require_starttls` for STARTTLS, `authenticator` for AUTH.
    """

    def __init__(self, *, sock: socket.socket | None = None, **smtp_options: Any) -> None:
        self._sock = sock or _bound_socket()
        self._smtp_options = smtp_options
        self.port: int = self._sock.getsockname()[1]
        self._caught: list[CaughtMail] = []
        self._changed = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """The value for HUB_SMTP_URL."""
        return f"smtp://127.0.0.1:{self.port}"

    @property
    def messages(self) -> list[CaughtMail]:
        with self._changed:
            return list(self._caught)

    def wait_for(self, count: int, timeout: float = 60.0) -> list[CaughtMail]:
        """Block until `count` messages arrived; TimeoutError after `timeout` seconds."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._caught) >= count, timeout):
                raise TimeoutError(f"expected {count} e-mails, got {len(self._caught)}")
            return list(self._caught)

    def start(self) -> MailCatcher:
        self._thread = threading.Thread(target=self._run, name="mail-catcher", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None or not self._ready.is_set():
            raise RuntimeError("the mail catcher did not start") from self._error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)
        self._sock.close()

    def __enter__(self) -> MailCatcher:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # aiosmtpd calls this for every message, after the envelope is complete.
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        caught = CaughtMail(str(envelope.mail_from), tuple(envelope.rcpt_tos), raw)
        with self._changed:
            self._caught.append(caught)
            self._changed.notify_all()
        return "250 Message accepted for delivery"

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported by start(); a thread has no caller
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        loop = self._loop

        def protocol() -> Any:
            return SMTP(self, hostname="localhost", loop=loop, **self._smtp_options)

        server = await loop.create_server(protocol, sock=self._sock)
        self._ready.set()
        async with server:
            await self._stop.wait()


def _bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock
