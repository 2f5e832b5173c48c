"""Load generation: many keep-alive HTTP/1.1 connections, each sending requests back to back.

A full HTTP client spends more CPU per request than the hub does on a simple
read, and on a small machine the load generator shares the cores with the hub;
so the benchmark speaks just enough HTTP/1.1 itself (the hub always answers
with Content-Length) to keep the client's share small.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

# (method, path with query, body) of the next request of a worker.
RequestMaker = Callable[[int], tuple[str, str, bytes]]


class Connection:
    """One keep-alive connection to the hub."""

    def __init__(self, host: str, port: int, headers: Mapping[str, str]) -> None:
        self._host, self._port = host, port
        self._head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: Mapping[str, str] | None = None
    ) -> tuple[int, bytes]:
        """Send one request and read its answer; `headers` are added to this one only."""
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
        assert self._reader is not None
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self._host}:{self._port}\r\n{self._head}"
            f"{extra}Content-Length: {len(body)}\r\n\r\n"
        )
        self._writer.write(head.encode("latin-1") + body)
        await self._writer.drain()
        status_line, _, rest = (await self._reader.readuntil(b"\r\n\r\n")).partition(b"\r\n")
        length = None
        for line in rest.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length is None:
            raise RuntimeError("the hub answered without Content-Length")
        return int(status_line.split()[1]), await self._reader.readexactly(length)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            await self._writer.wait_closed()


@dataclass
class Result:
    """What one phase achieved in its measured window."""

    seconds: float
    latencies: list[float] = field(default_factory=list)
    failures: dict[int, int] = field(default_factory=dict)
    completed: int = 0  # every expected answer, warm-up included
    cpu_seconds: float | None = None  # the hub process's CPU time over the whole phase
    # Expected answers that arrived inside the measured window (whenever they were sent),
    # and the hub's CPU time over exactly that window: their quotient leaves out the
    # warm-up, when first requests fill caches and a new hub is still settling.
    window_completed: int = 0
    window_cpu_seconds: float | None = None

    @property
    def cpu_per_request(self) -> float | None:
        """Milliseconds of hub CPU per request: robust where the machine is shared."""
        if self.cpu_seconds is None or not self.completed:
            return None
        return self.cpu_seconds / self.completed * 1000

    @property
    def window_cpu_per_request(self) -> float | None:
        """Milliseconds of hub CPU per answer over the measured window only."""
        if self.window_cpu_seconds is None or not self.window_completed:
            return None
        return self.window_cpu_seconds / self.window_completed * 1000

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile(self, p: int) -> float:
        """Latency percentile in milliseconds."""
        if len(self.latencies) < 2:
            return self.latencies[0] * 1000 if self.latencies else 0.0
        return statistics.quantiles(self.latencies, n=100)[p - 1] * 1000


async def hammer(
    host: str,
    port: int,
    headers: Mapping[str, str],
    make: RequestMaker,
    *,
    clients: int,
    seconds: float,
    warmup: float,
    expect: int = 200,
    pid: int | None = None,
) -> Result:
    """`clients` connections sending `make(i)` requests for `warmup + seconds`.

    Only requests that both start and finish inside the measured window count.
    """
    loop = asyncio.get_running_loop()
    start = loop.time() + warmup
    end = start + seconds
    result = Result(seconds)

    async def worker(number: int) -> None:
        connection = Connection(host, port, headers)
        sequence = number
        try:
            while (began := loop.time()) < end:
                method, path, body = make(sequence)
                sequence += clients
                status, _ = await connection.request(method, path, body)
                finished = loop.time()
                result.completed += status == expect
                result.window_completed += status == expect and start <= finished <= end
                if began < start or finished > end:
                    continue
                if status == expect:
                    result.latencies.append(finished - began)
                else:
                    result.failures[status] = result.failures.get(status, 0) + 1
        finally:
            await connection.close()

    # The hub's CPU time when the measured window opens and closes, read on the loop's
    # own clock, as the window is defined.
    window: dict[str, float | None] = {}
    timers = []
    if pid is not None:
        for name, at in (("start", start), ("end", end)):
            timers.append(loop.call_at(at, _sample_cpu, window, name, pid))
    cpu_before = process_cpu_seconds(pid) if pid is not None else None
    try:
        await asyncio.gather(*(worker(number) for number in range(clients)))
    finally:
        for timer in timers:
            timer.cancel()
    cpu_after = process_cpu_seconds(pid) if pid is not None else None
    if cpu_before is not None and cpu_after is not None:
        result.cpu_seconds = cpu_after - cpu_before
    window_start, window_end = window.get("start"), window.get("end")
    if window_start is not None and window_end is not None:
        result.window_cpu_seconds = window_end - window_start
    return result


def _sample_cpu(samples: dict[str, float | None], name: str, pid: int) -> None:
    samples[name] = process_cpu_seconds(pid)


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux `/proc`; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def now() -> float:
    """Wall-clock seconds: comparable with the hub's timestamps on the same machine."""
    return time.time()
