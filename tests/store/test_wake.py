"""The SQLite wake-up signal (hub.store.wake) with real AF_UNIX sockets.

Each `Wake` here stands for one process sharing the database file: what one sends
must reach every other listener and never itself, and the file system beside the
database must stay clean of dead processes' sockets.
"""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from hub.store import wake as wake_module
from hub.store.db import Database
from hub.store.wake import MAX_SOCKET_PATH, Wake, wake_directory


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def signal_for(path: Path) -> Wake:
    found = Wake.for_database(Database(sqlite_url(path)))
    assert found is not None
    return found


class Woken:
    """Counts the wake-ups of one listener, and lets a test wait for the next."""

    def __init__(self) -> None:
        self.count = 0
        self._event = asyncio.Event()

    def __call__(self) -> None:
        self.count += 1
        self._event.set()

    async def wait(self, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            await self._event.wait()
        self._event.clear()


@asynccontextmanager
async def listening(path: Path) -> AsyncIterator[tuple[Wake, Woken]]:
    signal, woken = signal_for(path), Woken()
    signal.listen(woken)
    try:
        yield signal, woken
    finally:
        signal.close()


async def settle() -> None:
    """Let the loop run the readers of datagrams already sent."""
    for _ in range(5):
        await asyncio.sleep(0.01)


async def test_a_signal_reaches_the_other_listeners_and_not_the_sender(tmp_path: Path) -> None:
    database = tmp_path / "hub.db"
    async with listening(database) as (first, first_woken), listening(database) as (_, second):
        async with listening(database) as (_, third):
            assert first.directory == tmp_path / "hub.db.wake"
            assert first.send() == 2
            await second.wait()
            await third.wait()
            await settle()
            assert first_woken.count == 0  # its own commit woke it in-process already

            # A process that only writes (the API role) binds nothing and reaches all.
            writer = signal_for(database)
            assert writer.path is None
            assert writer.send() == 3
            await first_woken.wait()
            writer.close()
        assert first.send() == 1  # the closed third is gone from the directory
    assert not (tmp_path / "hub.db.wake").exists()  # the last one out removed it


async def test_a_directory_removed_meanwhile_is_made_again(tmp_path: Path) -> None:
    database = tmp_path / "hub.db"
    writer = signal_for(database)
    writer.close()  # the last process out removes the empty directory...
    assert not writer.directory.exists()
    async with listening(database) as (_, woken):  # ...and the next one makes it again
        other = signal_for(database)
        assert other.send() == 1
        await woken.wait()
        other.close()
        assert writer.directory.exists()  # not removed while a socket is bound there


class CountingWake(Wake):
    """A sender that counts its rounds of datagrams."""

    rounds = 0

    def send(self) -> int:
        self.rounds += 1
        return super().send()


async def test_signals_in_one_loop_turn_are_sent_once_and_received_as_one(tmp_path: Path) -> None:
    database = tmp_path / "hub.db"
    async with listening(database) as (_receiver, woken):
        writer = CountingWake.for_database(Database(sqlite_url(database)))
        assert isinstance(writer, CountingWake)
        for _ in range(100):  # a group commit releases many writers in one turn
            writer.signal()
        await woken.wait()
        await settle()
        assert writer.rounds == 1
        assert woken.count == 1
        for _ in range(3):  # datagrams not read yet are drained as one wake-up
            writer.send()
        await woken.wait()
        await settle()
        assert woken.count == 2
        writer.close()


async def test_two_names_of_one_file_share_one_directory(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "data")
    async with listening(tmp_path / "data" / "hub.db") as (_, woken):
        writer = signal_for(tmp_path / "link" / "hub.db")
        assert writer.send() == 1
        await woken.wait()
        writer.close()


async def test_a_dead_process_socket_is_removed(tmp_path: Path) -> None:
    database = tmp_path / "hub.db"
    async with listening(database) as (_, woken):
        directory = wake_directory(str(database))
        # A process killed with -9 leaves its socket file, bound to nothing.
        dead = directory / "4242-deadbeef.sock"
        corpse = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        corpse.bind(str(dead))
        corpse.close()
        writer = signal_for(database)
        assert writer.send() == 1  # the living one only
        assert not dead.exists()
        await woken.wait()
        assert writer.send() == 1  # and it is not tried again
        writer.close()


async def test_a_peer_with_a_full_queue_is_left_as_it_is(tmp_path: Path) -> None:
    database = tmp_path / "hub.db"
    writer = signal_for(database)  # makes the directory
    directory = writer.directory
    # A listener that does not read (busy, or its loop blocked): its queue fills up.
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stuck.bind(str(directory / "4343-0badf00d.sock"))
    try:
        for _ in range(2_000):
            assert writer.send() == 1  # EAGAIN means a wake-up is pending there already
        assert (directory / "4343-0badf00d.sock").exists()
    finally:
        writer.close()
        stuck.close()


async def test_the_listing_is_cached_but_not_within_a_file_system_tick(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = tmp_path / "hub.db"
    async with listening(database) as (_, _first):
        writer = signal_for(database)
        try:
            assert writer.send() == 1
            directory = writer.directory
            listed = os.stat(directory).st_mtime_ns
            # Another process binds in the same tick of the file system's clock: the
            # directory's mtime does not move. A listing that young is not trusted...
            async with listening(database) as (_, second):
                os.utime(directory, ns=(listed, listed))
                assert writer.send() == 2
                await second.wait()
            # ...an older one is: a socket that appears without an mtime change is not seen.
            monkeypatch.setattr(wake_module, "_RACY_NS", 0)
            assert writer.send() == 1  # the second one left: the mtime moved
            listed = os.stat(directory).st_mtime_ns
            async with listening(database) as (_, third):
                os.utime(directory, ns=(listed, listed))
                assert writer.send() == 1
                os.utime(directory, ns=(listed + 1, listed + 1))  # any change: listed again
                assert writer.send() == 2
                await third.wait()
        finally:
            writer.close()


@pytest.fixture
def short_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A temporary directory with a short path, standing in for the system's /tmp."""
    with tempfile.TemporaryDirectory(dir="/tmp") as directory:
        monkeypatch.setattr(tempfile, "tempdir", directory)
        yield Path(directory)


def long_directory(tmp_path: Path) -> Path:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    return deep


async def test_a_long_database_path_falls_back_to_the_temporary_directory(
    tmp_path: Path, short_tmp: Path
) -> None:
    database = long_directory(tmp_path) / "hub.db"
    assert len(os.fsencode(f"{database}.wake/1-00000000.sock")) > MAX_SOCKET_PATH
    async with listening(database) as (listener, woken):
        assert listener.directory.parent == short_tmp
        assert listener.directory.name.startswith("hub-wake-")
        assert listener.path is not None
        assert len(os.fsencode(listener.path)) <= MAX_SOCKET_PATH
        writer = signal_for(database)
        assert writer.directory == listener.directory  # every process finds the same one
        assert writer.send() == 1
        await woken.wait()
        writer.close()


async def test_an_unusable_directory_beside_the_database_falls_back(
    tmp_path: Path, short_tmp: Path
) -> None:
    database = tmp_path / "hub.db"
    (tmp_path / "hub.db.wake").write_text("not a directory")
    async with listening(database) as (listener, woken):
        assert listener.directory.parent == short_tmp
        writer = signal_for(database)
        assert writer.send() == 1
        await woken.wait()
        writer.close()


def test_a_directory_that_is_a_symlink_is_refused(
    tmp_path: Path, short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # In a shared temporary directory anyone may have put a symlink where ours would go.
    database = long_directory(tmp_path) / "hub.db"
    planted = wake_directory(str(database))
    assert planted.parent == short_tmp
    (tmp_path / "elsewhere").mkdir()
    planted.symlink_to(tmp_path / "elsewhere")
    assert Wake.for_database(Database(sqlite_url(database))) is None
    assert "a symlink?" in caplog.text
    assert "wait for the next poll" in caplog.text


def test_no_signal_when_even_the_temporary_directory_is_too_long(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(long_directory(tmp_path)))
    assert (
        Wake.for_database(Database(sqlite_url(long_directory(tmp_path / "x") / "hub.db"))) is None
    )
    assert "too long for a socket path" in caplog.text


@pytest.mark.parametrize(
    "url",
    [
        "sqlite+aiosqlite://",
        "sqlite+aiosqlite:///:memory:",
        "postgresql+asyncpg://hub@127.0.0.1:1/hub",  # NOTIFY reaches every process
    ],
)
def test_no_signal_where_no_other_process_needs_one(url: str) -> None:
    assert Wake.for_database(Database(url)) is None


async def test_after_close_signals_do_nothing_and_the_socket_is_gone(tmp_path: Path) -> None:
    database = tmp_path / "hub.db"
    async with listening(database) as (other, _):
        signal, woken = signal_for(database), Woken()
        signal.listen(woken)
        assert signal.path is not None
        own: Callable[[], bool] = Path(signal.path).exists
        assert own()
        signal.close()
        assert not own()
        assert signal.send() == 0
        signal.signal()
        assert other.send() == 0


def test_the_socket_name_fits_its_length_budget() -> None:
    name = f"{2**22}-{'f' * 8}{wake_module.SUFFIX}"
    assert len(name) == wake_module._NAME_LENGTH
