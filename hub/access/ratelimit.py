"""Rate limits: keyed token buckets and refusal windows, in memory, per process, no I/O.

What is limited, and by which key, is the API's business (`hub.api.limits`); this module
only counts. Three tables, each independent of the others and each keyed per client, so
a limited client never uses up another's budget:

- token requests per client address and per claimed client_id (`TokenBuckets`);
- FHIR writes per app (`TokenBuckets`);
- refused requests of callers without a valid token, per address (`RefusalWindows`).

A token bucket rather than a fixed window for the first two: it lets an app spend a
minute's budget in a burst yet never more than its rate over time, and its `Retry-After`
is exact (the time until one token is back). A fixed window for the refusals: "60 per
minute, then 429 until the minute is over, audited once" is what an auditor reads.

Every operation is O(1): a dict lookup and an `OrderedDict.move_to_end`. Memory is
bounded: each table holds at most `max_entries` keys in least-recently-used order; a new
key first drops idle entries from the old end (a full bucket, an ended window: forgetting
them changes nothing), and when the table is still full, the least recently used entry
whatever its state (that key starts afresh: the limit fails open for it, never closed for
a newcomer). Not thread-safe: one event loop uses it.

Why not the `limits` package: its in-memory storage reads `time.time()` itself (tests
would have to sleep through windows), expires keys from a background timer thread, has
no bound on the number of keys, and offers windows but no token bucket. What is needed
here is about a hundred lines.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TypeVar

from hub.settings import Settings

Clock = Callable[[], float]
_Entry = TypeVar("_Entry")

# How many keys one table remembers: about 100 bytes each, so a few MB at most.
MAX_ENTRIES = 10_000
# A client that stays limited is audited once per this many seconds, not per request.
REPORT_INTERVAL = 60.0
# The refused-request budget is per this many seconds (HUB_RATE_LIMIT_REFUSED_PER_MINUTE).
REFUSAL_WINDOW = 60.0
# Idle entries a new key may drop from the old end of a table: a bounded amount of work.
_SWEEP = 4


@dataclass(frozen=True)
class AppLimits:
    """An app's own limits from the apps file (`rate_limit:`); None = the hub's setting.

    0 turns a limit off for that app.
    """

    token_per_minute: float | None = None
    writes_per_second: float | None = None


@dataclass(frozen=True)
class Verdict:
    """The answer to one request: allowed, or refused for `retry_after` whole seconds.

    `report` is True for the first refusal of a key in a report window: the one to audit.
    """

    allowed: bool
    retry_after: int = 0
    report: bool = False


ALLOWED = Verdict(True)


def _whole_seconds(seconds: float) -> int:
    """A `Retry-After` value: whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(seconds - 1e-9))


class _Bucket:
    __slots__ = ("burst", "rate", "reported_until", "stamp", "tokens")

    def __init__(self, now: float, rate: float, burst: float) -> None:
        self.tokens = burst
        self.stamp = now
        self.rate = rate
        self.burst = burst
        self.reported_until = -math.inf

    def idle(self, now: float) -> bool:
        """Full again and not in a report window: forgetting it changes nothing."""
        full = self.tokens + (now - self.stamp) * self.rate >= self.burst
        return full and now >= self.reported_until


class TokenBuckets:
    """One token bucket per key: `rate` tokens a second, at most `burst` held.

    The rate and burst come with every `take`, so a reloaded apps file applies at the
    next request; a bucket holding more than a lowered burst is cut down to it.
    """

    def __init__(
        self,
        *,
        clock: Clock = time.monotonic,
        max_entries: int = MAX_ENTRIES,
        report_interval: float = REPORT_INTERVAL,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._clock = clock
        self._max = max_entries
        self._report_interval = report_interval
        self._buckets: OrderedDict[Hashable, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def __contains__(self, key: object) -> bool:
        return key in self._buckets

    def take(self, key: Hashable, rate: float, burst: float) -> Verdict:
        """Spend one token of `key`'s bucket; a rate of 0 (or less) means no limit."""
        if rate <= 0:
            return ALLOWED
        burst = max(burst, 1.0)
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            _make_room(self._buckets, self._max, lambda b: b.idle(now))
            bucket = self._buckets[key] = _Bucket(now, rate, burst)
        else:
            self._buckets.move_to_end(key)
            elapsed = max(0.0, now - bucket.stamp)
            bucket.tokens = min(burst, bucket.tokens + elapsed * bucket.rate)
            bucket.stamp, bucket.rate, bucket.burst = now, rate, burst
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return ALLOWED
        report = now >= bucket.reported_until
        if report:
            bucket.reported_until = now + self._report_interval
        return Verdict(False, _whole_seconds((1 - bucket.tokens) / rate), report)


@dataclass(frozen=True)
class Blocked:
    """A key over its refused-request budget: refused until its window ends.

    `refused` is how many refusals filled the window, `elapsed` how long ago (seconds)
    the window began, `length` its length; `report` as in `Verdict`.
    """

    retry_after: int
    report: bool
    refused: int
    elapsed: float
    length: float


class _Window:
    __slots__ = ("refused", "reported", "start")

    def __init__(self, start: float) -> None:
        self.start = start
        self.refused = 0
        self.reported = False


class RefusalWindows:
    """Refused requests per key in fixed windows: `budget` per window, then blocked.

    A window opens at a key's first refusal and lasts `window` seconds. `count` records
    a refusal; once a window holds `budget` of them, `check` answers `Blocked` until it
    ends, with `report` True exactly once per window. A budget of 0 means no limit.
    """

    def __init__(
        self,
        budget: int,
        *,
        window: float = REFUSAL_WINDOW,
        clock: Clock = time.monotonic,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.budget = budget
        self.window = window
        self._clock = clock
        self._max = max_entries
        self._windows: OrderedDict[Hashable, _Window] = OrderedDict()

    def __len__(self) -> int:
        return len(self._windows)

    def __contains__(self, key: object) -> bool:
        return key in self._windows

    def check(self, key: Hashable) -> Blocked | None:
        """`Blocked` while `key`'s window is full, else None; counts nothing."""
        if self.budget <= 0:
            return None
        found = self._windows.get(key)
        if found is None:
            return None
        now = self._clock()
        end = found.start + self.window
        if now >= end or found.refused < self.budget:
            return None
        report = not found.reported
        found.reported = True
        return Blocked(
            _whole_seconds(end - now), report, found.refused, now - found.start, self.window
        )

    def count(self, key: Hashable) -> None:
        """Record one refused request of `key`."""
        if self.budget <= 0:
            return
        now = self._clock()
        found = self._windows.get(key)
        if found is None or now >= found.start + self.window:
            if found is None:
                _make_room(self._windows, self._max, lambda w: now >= w.start + self.window)
            found = self._windows[key] = _Window(now)
        self._windows.move_to_end(key)
        found.refused += 1


def _make_room(
    table: OrderedDict[Hashable, _Entry], limit: int, idle: Callable[[_Entry], bool]
) -> None:
    """Before a new key: drop a few idle entries from the old end, then one more if full."""
    for _ in range(_SWEEP):
        if not table:
            return
        oldest = next(iter(table.values()))
        if not idle(oldest):
            break
        table.popitem(last=False)
    while len(table) >= limit:
        table.popitem(last=False)


class RateLimits:
    """The hub's three limits, from its settings: one instance per process.

    `app` is the caller's own `rate_limit:` from the apps file, when it has one; its
    values win over the settings. The per-app token limit applies to the bucket of the
    claimed client_id; an address always has the hub's limit.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock = time.monotonic,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.tokens = TokenBuckets(clock=clock, max_entries=max_entries)
        self.writes = TokenBuckets(clock=clock, max_entries=max_entries)
        self.refused = RefusalWindows(
            settings.rate_limit_refused_per_minute, clock=clock, max_entries=max_entries
        )

    def token_request_by_address(self, domain: str, address: str | None) -> Verdict:
        """A token request from `address` (before its body is read)."""
        per_minute = self.settings.rate_limit_token_per_minute
        return self.tokens.take(("address", domain, address), per_minute / 60, per_minute)

    def token_request_by_client(
        self, domain: str, client_id: str, app: AppLimits | None
    ) -> Verdict:
        """A token request whose assertion claims `client_id` (unverified: a key only)."""
        per_minute = self.token_per_minute(app)
        return self.tokens.take(("client", domain, client_id), per_minute / 60, per_minute)

    def write(self, domain: str, client_id: str, app: AppLimits | None) -> Verdict:
        """A FHIR write by the authenticated app `client_id`."""
        per_second = self.writes_per_second(app)
        return self.writes.take((domain, client_id), per_second, per_second)

    def token_per_minute(self, app: AppLimits | None) -> float:
        if app is not None and app.token_per_minute is not None:
            return app.token_per_minute
        return self.settings.rate_limit_token_per_minute

    def writes_per_second(self, app: AppLimits | None) -> float:
        if app is not None and app.writes_per_second is not None:
            return app.writes_per_second
        return self.settings.rate_limit_writes_per_second
