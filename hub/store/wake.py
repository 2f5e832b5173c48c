"""SQLite's cross-process wake-up: a commit that queued deliveries wakes every dispatcher.

On PostgreSQL a unit that queues outbox rows NOTIFYs (`hub.store.outbox.announce`) and
every process LISTENs (`hub.store.listen`). SQLite has no such channel, yet several
processes may share one database file: the uvicorn workers of `hub serve --workers N`,
and `hub serve --role api` beside `hub worker` (docs/architecture.md §6). Without a
signal their dispatchers would only find new rows at the next safety-net poll.

The signal lives beside the database file, which every one of those processes can
reach (they are on one machine, since SQLite cannot be shared over a network):

- each delivering process binds a non-blocking AF_UNIX datagram socket in a directory
  next to the database (`<database>.wake/`, named from the file's real path so that
  two names of one file agree), and calls its dispatcher's `wake()` when a datagram
  arrives (`listen`);
- a process that committed a write which queued rows sends one byte to every socket
  in that directory but its own (`signal`), each on a socket connected to that peer
  alone. A datagram either lands or finds the peer's queue full (EAGAIN), and a full
  queue already holds a wake-up, so nothing is lost that matters; a socket file
  nobody is bound to answers ECONNREFUSED: its process died without cleaning up
  (kill -9), and the sender removes it.

Datagrams carry no data and are coalesced on both sides: a receiver drains its queue
and wakes once; a sender sends once per event-loop turn however many commits asked
(a group commit releases hundreds of writers in one turn). The directory listing is
cached and read again only when the directory's mtime changes.

Should the signal fail (the directory cannot be made, a peer runs as another user),
the dispatcher's poll (`HUB_DELIVERY_POLL_SECONDS`) still delivers: only the wake-up
is late. An in-memory database lives in one process, and PostgreSQL has its own
channel: `Wake.for_database` answers None for both.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import secrets
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from hub.store.db import Database

log = logging.getLogger("hub.wake")

# The longest path AF_UNIX can bind: `sun_path` holds 108 bytes on Linux and 104 on
# BSD and macOS, a terminating NUL included.
MAX_SOCKET_PATH = 103 if sys.platform == "darwin" or "bsd" in sys.platform else 107
# `<pid>-<8 hex>.sock`, with room for the largest pid Linux hands out (2^22).
_NAME_LENGTH = len(f"{2**22}-{'0' * 8}.sock")
SUFFIX = ".sock"
# File-system timestamps are coarse (a tick of a few ms): a socket bound in the same
# tick as the listing leaves the mtime unchanged. A listing made this soon after the
# directory's last change is not trusted, so such a peer is found at the next signal.
_RACY_NS = 1_000_000_000


def wake_directory(database_path: str) -> Path:
    """Where the sockets of the processes sharing `database_path` live.

    Beside the database file, unless a socket path there would be too long for
    AF_UNIX; then a directory in the temporary directory, named by a hash of the
    file's real path (every process sharing the file computes the same one).
    """
    real = os.path.realpath(database_path)
    beside = Path(f"{real}.wake")
    if _fits(beside):
        return beside
    return _fallback_directory(real)


def _fits(directory: Path) -> bool:
    return len(os.fsencode(directory)) + 1 + _NAME_LENGTH <= MAX_SOCKET_PATH


def _fallback_directory(real_path: str) -> Path:
    digest = hashlib.sha256(os.fsencode(real_path)).hexdigest()[:24]
    return Path(tempfile.gettempdir()) / f"hub-wake-{digest}"


def _own_directory(directory: Path) -> None:
    """Make `directory` (private to this user) or check that the existing one is ours.

    Raises OSError when it cannot be made or is not a directory of this user: in a
    shared temporary directory anyone could have put a symlink or their own there.
    """
    with contextlib.suppress(FileExistsError):
        directory.mkdir(mode=0o700)
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode):
        raise OSError(errno.ENOTDIR, "not a directory (a symlink?)", str(directory))
    if info.st_uid != os.geteuid():
        raise OSError(errno.EPERM, "owned by another user", str(directory))


class Wake:
    """The wake-up signal among the processes sharing one SQLite database file."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path: str | None = None  # this process's socket, once it listens
        self._receiver: socket.socket | None = None
        # One connected socket per peer: a datagram is charged to its sender's buffer
        # until the peer reads it, so a peer that does not read (a blocked loop) fills
        # only its own socket's buffer, never the one the healthy peers are sent on.
        self._senders: dict[str, socket.socket] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._peers: list[str] = []
        self._listed_mtime: int | None = None
        self._listed_at = 0
        self._scheduled = False
        self._closed = False

    @classmethod
    def for_database(cls, database: Database) -> Wake | None:
        """The signal for `database`, or None where none is needed or none can be had."""
        if database.dialect != "sqlite":
            return None  # PostgreSQL: NOTIFY reaches every process's listener
        path = database.sqlite_path
        if path in ("", ":memory:"):
            return None  # one process's private database: the in-process wake-up covers it
        real = os.path.realpath(path)
        for directory in dict.fromkeys((wake_directory(path), _fallback_directory(real))):
            if not _fits(directory):
                log.warning("no wake-up directory at %s: too long for a socket path", directory)
                continue
            try:
                _own_directory(directory)
            except OSError as exc:
                log.warning("no wake-up directory at %s (%s)", directory, exc.strerror or exc)
                continue
            return cls(directory)
        log.warning(
            "deliveries queued by other processes of %s wait for the next poll", database.url
        )
        return None

    # --- receiving: the delivering processes -------------------------------------------

    def listen(self, on_wake: Callable[[], None]) -> None:
        """Bind this process's socket; call `on_wake` whenever another process signals.

        Must be called in the running event loop, which watches the socket. Raises
        OSError when the socket cannot be bound (the caller falls back to its poll).
        """
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        path = str(self.directory / f"{os.getpid()}-{secrets.token_hex(4)}{SUFFIX}")
        try:
            receiver.setblocking(False)
            for attempt in range(3):
                # The last process to leave removes the empty directory (`close`), maybe
                # just now: make it again.
                _own_directory(self.directory)
                try:
                    receiver.bind(path)
                    break
                except FileNotFoundError:
                    if attempt == 2:
                        raise
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(receiver.fileno(), self._drain, receiver, on_wake)
        except BaseException:
            receiver.close()
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        self._receiver, self.path = receiver, path

    @staticmethod
    def _drain(receiver: socket.socket, on_wake: Callable[[], None]) -> None:
        """Read every pending datagram; they all mean one thing, so wake once."""
        woken = False
        while True:
            try:
                receiver.recv(16)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                log.debug("reading the wake-up socket failed: %s", exc)
                break
            woken = True
        if woken:
            on_wake()

    # --- sending: the processes that write ------------------------------------------------

    def signal(self) -> None:
        """Wake the other processes' dispatchers: once per event-loop turn, however often asked.

        Called after a commit that queued deliveries. Outside an event loop it sends at once.
        """
        if self._scheduled or self._closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.send()
            return
        self._scheduled = True
        loop.call_soon(self._send_scheduled)

    def _send_scheduled(self) -> None:
        self._scheduled = False
        self.send()

    def send(self) -> int:
        """Send one wake-up to every other socket now; returns how many peers it reached."""
        if self._closed:
            return 0
        reached = 0
        for peer in list(self._current_peers()):  # _forget edits the cached list
            try:
                self._sender(peer).send(b"\x01")
            except BlockingIOError:
                pass  # EAGAIN: its queue is full, so a wake-up is pending there already
            except (ConnectionRefusedError, FileNotFoundError):
                self._forget(peer, unlink=True)  # its process is gone
                continue
            except OSError as exc:
                log.debug("no wake-up for %s: %s", peer, exc)  # the poll covers it
                self._forget(peer, unlink=False)
                continue
            reached += 1
        return reached

    def _sender(self, peer: str) -> socket.socket:
        sender = self._senders.get(peer)
        if sender is None:
            sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                sender.setblocking(False)
                sender.connect(peer)  # ECONNREFUSED at once when nobody is bound there
            except BaseException:
                sender.close()
                raise
            self._senders[peer] = sender
        return sender

    def _current_peers(self) -> list[str]:
        """The other sockets in the directory, listed again only when it has changed."""
        try:
            mtime = os.stat(self.directory).st_mtime_ns
        except OSError:
            return []
        if mtime != self._listed_mtime or self._listed_at - mtime < _RACY_NS:
            self._listed_at = time.time_ns()
            try:
                names = os.listdir(self.directory)
            except OSError:
                names = []
            self._listed_mtime = mtime
            self._peers = sorted(
                str(self.directory / name)
                for name in names
                if name.endswith(SUFFIX) and str(self.directory / name) != self.path
            )
            for gone in set(self._senders) - set(self._peers):
                self._senders.pop(gone).close()
        return self._peers

    def _forget(self, peer: str, *, unlink: bool) -> None:
        """Stop sending to `peer`; with `unlink`, remove the socket file of a dead process.

        Nobody can be bound to that name again: names carry the pid and a random part.
        """
        sender = self._senders.pop(peer, None)
        if sender is not None:
            sender.close()
        if unlink:
            with contextlib.suppress(OSError):
                os.unlink(peer)
                log.debug("removed the wake-up socket of a process that is gone: %s", peer)
        with contextlib.suppress(ValueError):
            self._peers.remove(peer)

    # --- shutdown --------------------------------------------------------------------------

    def close(self) -> None:
        """Stop listening and remove this process's socket; later signals do nothing."""
        self._closed = True
        if self._receiver is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._receiver.fileno())
            self._receiver.close()
            self._receiver = None
        if self.path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        for sender in self._senders.values():
            sender.close()
        self._senders.clear()
        # The last one out leaves no directory behind (it fails while others are bound).
        with contextlib.suppress(OSError):
            self.directory.rmdir()
