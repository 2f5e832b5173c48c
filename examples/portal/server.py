"""Serving the portal over HTTPS: its certificate, its socket, and uvicorn.

The socket is bound and listening before the portal subscribes, so a notification that
the hub sends the moment the Subscription exists waits in the backlog instead of being
refused while uvicorn is still starting.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from examples.portal.app import Portal


@dataclass(frozen=True)
class Certificate:
    certfile: Path  # the certificate chain (PEM)
    keyfile: Path  # its private key (PEM)
    ca_bundle: Path | None = None  # the CA a client must trust, when it is a local one


def local_certificate(directory: Path, *hostnames: str) -> Certificate:
    """A certificate for `hostnames` from a throwaway local CA (trustme), for the demo.

    Give `ca_bundle` to the hub as HUB_CA_BUNDLE, so that it trusts the portal.
    """
    import trustme  # a development dependency: only this demo mode needs it

    directory.mkdir(parents=True, exist_ok=True)
    authority = trustme.CA(organization_name="Koppeltaal demo portal CA")
    issued = authority.issue_cert(*(hostnames or ("127.0.0.1", "localhost")))
    certificate = Certificate(
        certfile=directory / "portal-cert.pem",
        keyfile=directory / "portal-key.pem",
        ca_bundle=directory / "portal-ca.pem",
    )
    issued.cert_chain_pems[0].write_to_path(str(certificate.certfile))
    for intermediate in issued.cert_chain_pems[1:]:
        intermediate.write_to_path(str(certificate.certfile), append=True)
    fd = os.open(certificate.keyfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(issued.private_key_pem.bytes())
    authority.cert_pem.write_to_path(str(certificate.ca_bundle))
    return certificate


def listening_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def _server(portal: Portal, log_level: str) -> uvicorn.Server:
    config = uvicorn.Config(
        portal.app,
        ssl_certfile=str(portal.config.certfile),
        ssl_keyfile=str(portal.config.keyfile),
        log_level=log_level,
        lifespan="on",
        server_header=False,
    )
    return uvicorn.Server(config)


def serve(portal: Portal, sock: socket.socket, *, log_level: str = "info") -> None:
    """Serve in the foreground until interrupted (Ctrl-C)."""
    asyncio.run(_server(portal, log_level).serve(sockets=[sock]))


@contextmanager
def running_portal(
    portal: Portal, sock: socket.socket, *, log_level: str = "warning"
) -> Iterator[Portal]:
    """Serve in a background thread (its own event loop) while the block runs."""
    server = _server(portal, log_level)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(server.serve(sockets=[sock]))
        except BaseException as exc:  # surfaced below; a thread has no caller
            failure.append(exc)

    thread = threading.Thread(target=run, name="portal", daemon=True)
    thread.start()
    try:
        while not server.started:
            if failure or not thread.is_alive():
                raise RuntimeError(f"the portal did not start (see its log): {failure}")
            threading.Event().wait(0.02)
        yield portal
    finally:
        server.should_exit = True
        thread.join(timeout=30)
