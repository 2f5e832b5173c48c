"""What must hold before the hub starts, checked first, each failure one line.

`hub serve` and `hub worker` run these checks before they start anything, and
`hub config check` runs them without starting: the settings (already parsed by
then), the apps file and the matrix, the keys directory, the database (reached
once; `--wait-for-db` keeps asking while it starts), and for `hub serve` the TLS
files and the address to listen on. A failure is a `StartupError`, whose text is
the one line the command prints (exit code 2): what is wrong, where, and a hint.
The same faults found later, inside the server, would each be a traceback of a
hundred lines.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from hub.access import ConfigError
from hub.access.apps import AccessConfig
from hub.settings import Settings
from hub.store.probe import Reached, Unreachable, masked, probe, probe_until


class StartupError(Exception):
    """Why the hub cannot start, in one line."""

    def __init__(self, text: str) -> None:
        super().__init__(" ".join(text.split()))  # one line, whatever the cause wrote


@dataclass(frozen=True)
class Listener:
    """Where `hub serve` will listen, and with which certificate."""

    host: str
    port: int | None  # None: `hub config check` without --port checks no address
    certfile: str | None = None
    keyfile: str | None = None


def access(settings: Settings) -> str:
    """The apps file and the matrix load; a line saying what they hold."""
    try:
        config = AccessConfig(settings.apps_file, settings.authz_matrix)
    except ConfigError as exc:
        raise StartupError(str(exc)) from exc
    domains = config.registry.domains
    apps = sum(len(domain.apps) for domain in domains.values())
    return (
        f"apps file {settings.apps_file}: {len(domains)} domain(s) "
        f"({', '.join(sorted(domains))}), {apps} application(s); "
        f"matrix {settings.authz_matrix}"
    )


def keys_dir(settings: Settings) -> str:
    """The keys directory exists and is writable, or can be made."""
    path = settings.keys_dir
    if path.exists():
        if not path.is_dir():
            raise StartupError(f"HUB_KEYS_DIR {path} is not a directory")
        if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
            raise StartupError(f"HUB_KEYS_DIR {path} is not writable by this user")
        return f"keys directory {path}"
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StartupError(f"HUB_KEYS_DIR {path} cannot be made: {parent} is not writable")
    return f"keys directory {path} (made at start-up)"


async def database(settings: Settings, *, wait_seconds: float = 0.0) -> str:
    """The database answers (for up to `wait_seconds` of asking); a line with its revision."""
    from hub.store.migrate import head_revision

    try:
        if wait_seconds > 0:
            reached: Reached = await probe_until(settings.database_url, wait_seconds)
        else:
            reached = await probe(settings.database_url)
    except Unreachable as exc:
        waited = f" (waited {wait_seconds:g} s)" if wait_seconds > 0 else ""
        raise StartupError(f"{exc}{waited}") from exc
    head = head_revision()
    if reached.revision is None:
        schema = "no schema yet: start-up creates it"
    elif reached.revision == head:
        schema = f"schema at {reached.revision}, current"
    else:
        schema = f"schema at {reached.revision}: start-up migrates it to {head}"
    return f"database {masked(settings.database_url)} ({reached.backend}): {schema}"


def tls(listener: Listener) -> str | None:
    """The certificate and key load together (when `hub serve` is to speak HTTPS)."""
    if listener.certfile is None and listener.keyfile is None:
        return None
    if listener.certfile is None:
        raise StartupError("--ssl-keyfile needs --ssl-certfile")
    for needed in (listener.certfile, listener.keyfile):
        if needed is not None and not os.path.isfile(needed):
            raise StartupError(f"TLS: {needed} does not exist")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(listener.certfile, listener.keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(
            f"TLS: cannot use certificate {listener.certfile} with key "
            f"{listener.keyfile or listener.certfile}: {exc.strerror or exc}"
        ) from exc
    return f"TLS certificate {listener.certfile}"


def address(listener: Listener) -> str | None:
    """Nothing else listens on the address (bound and released at once, as uvicorn binds)."""
    if listener.port is None:
        return None
    family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe_socket:
        probe_socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe_socket.bind((listener.host, listener.port))
        except OSError as exc:
            reason = exc.strerror or str(exc)
            hint = (
                "another process listens there: stop it or choose another --port"
                if exc.errno == errno.EADDRINUSE
                else "check --host"
            )
            raise StartupError(
                f"cannot listen on {listener.host}:{listener.port}: {reason.lower()} ({hint})"
            ) from exc
    return f"listening on {listener.host}:{listener.port} is possible"


@dataclass(frozen=True)
class Verdict:
    """One check's outcome: what passed, or the line saying why not."""

    text: str
    error: StartupError | None = None  # with its cause, for a traceback under debug

    @property
    def ok(self) -> bool:
        return self.error is None


async def check_all(
    settings: Settings, *, wait_for_db: float = 0.0, listener: Listener | None = None
) -> list[Verdict]:
    """Every check, even after one failed (`hub config check` reports them all)."""
    checks: list[Callable[[], str | None]] = [
        lambda: access(settings),
        lambda: keys_dir(settings),
    ]
    if listener is not None:
        checks += [lambda: tls(listener), lambda: address(listener)]
    verdicts = []
    for check in checks:
        try:
            text = check()
        except StartupError as exc:
            verdicts.append(Verdict(str(exc), exc))
        else:
            if text is not None:
                verdicts.append(Verdict(text))
    try:
        verdicts.append(Verdict(await database(settings, wait_seconds=wait_for_db)))
    except StartupError as exc:
        verdicts.append(Verdict(str(exc), exc))
    return verdicts


async def before_start(
    settings: Settings, *, wait_for_db: float = 0.0, listener: Listener | None = None
) -> None:
    """Every check, the database last (it may be waited for); the first failure raises."""
    access(settings)
    keys_dir(settings)
    if listener is not None:
        tls(listener)
        address(listener)
    await database(settings, wait_seconds=wait_for_db)
