"""The rate limiter's counting, on a clock the test moves: no sleeping, no timing."""

from __future__ import annotations

import pytest

from hub.access.ratelimit import AppLimits, RateLimits, RefusalWindows, TokenBuckets, Verdict
from hub.settings import Settings


class Clock:
    """Seconds that pass only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def spend(buckets: TokenBuckets, key: str, times: int, rate: float, burst: float) -> list[bool]:
    return [buckets.take(key, rate, burst).allowed for _ in range(times)]


def test_a_bucket_allows_its_burst_then_refuses_with_the_time_to_the_next_token() -> None:
    clock = Clock()
    buckets = TokenBuckets(clock=clock)
    assert spend(buckets, "a", 120, rate=2.0, burst=120) == [True] * 120
    refused = buckets.take("a", 2.0, 120)
    assert refused == Verdict(False, retry_after=1, report=True)
    # Half a second later one token is back (2 per second), and only one.
    clock.advance(0.5)
    assert spend(buckets, "a", 2, rate=2.0, burst=120) == [True, False]


def test_retry_after_is_whole_seconds_rounded_up() -> None:
    clock = Clock()
    buckets = TokenBuckets(clock=clock)
    per_minute = 6 / 60  # a token every 10 s
    assert spend(buckets, "a", 6, rate=per_minute, burst=6) == [True] * 6
    assert buckets.take("a", per_minute, 6).retry_after == 10
    clock.advance(2.5)
    assert buckets.take("a", per_minute, 6).retry_after == 8  # 7.5 s, rounded up


def test_a_bucket_refills_to_its_burst_and_no_further() -> None:
    clock = Clock()
    buckets = TokenBuckets(clock=clock)
    assert spend(buckets, "a", 3, rate=1.0, burst=3) == [True] * 3
    clock.advance(3600)  # an hour idle is still only a burst of 3
    assert spend(buckets, "a", 4, rate=1.0, burst=3) == [True, True, True, False]


def test_keys_are_independent() -> None:
    clock = Clock()
    buckets = TokenBuckets(clock=clock)
    assert spend(buckets, "limited", 2, rate=1.0, burst=1) == [True, False]
    assert spend(buckets, "other", 1, rate=1.0, burst=1) == [True]


def test_a_rate_of_zero_is_no_limit_and_keeps_no_bucket() -> None:
    buckets = TokenBuckets(clock=Clock())
    assert spend(buckets, "a", 1000, rate=0.0, burst=0) == [True] * 1000
    assert len(buckets) == 0


def test_a_lowered_burst_applies_at_once() -> None:
    """A reloaded apps file lowers an app's limit: its full bucket is cut down to it."""
    buckets = TokenBuckets(clock=Clock())
    assert buckets.take("a", 10.0, 10).allowed  # 9 tokens left
    assert spend(buckets, "a", 3, rate=2.0, burst=2) == [True, True, False]


def test_a_limited_key_is_reported_once_per_report_window() -> None:
    clock = Clock()
    buckets = TokenBuckets(clock=clock, report_interval=60)
    buckets.take("a", 1.0, 1)
    reports = [buckets.take("a", 1.0, 1).report for _ in range(5)]
    assert reports == [True, False, False, False, False]
    clock.advance(30)
    buckets.take("a", 1.0, 1)  # a token came back: allowed, and spent
    assert not buckets.take("a", 1.0, 1).report  # still the same report window
    clock.advance(30)
    buckets.take("a", 1.0, 1)
    assert buckets.take("a", 1.0, 1).report  # a new window: reported again


def test_idle_buckets_are_dropped_when_new_keys_come() -> None:
    clock = Clock()
    buckets = TokenBuckets(clock=clock, max_entries=100)
    for n in range(4):
        buckets.take(f"old{n}", 1.0, 1)
    clock.advance(2)  # every old bucket is full again: idle
    buckets.take("new", 1.0, 1)
    assert len(buckets) == 1
    assert "new" in buckets


def test_a_busy_bucket_is_not_dropped_as_idle() -> None:
    clock = Clock()
    buckets = TokenBuckets(clock=clock, max_entries=100)
    assert spend(buckets, "busy", 2, rate=0.01, burst=1) == [True, False]
    clock.advance(2)  # far from full at 0.01 a second
    buckets.take("new", 1.0, 1)
    assert "busy" in buckets
    assert not buckets.take("busy", 0.01, 1).allowed


def test_the_table_never_outgrows_its_cap() -> None:
    """A flood of new keys (addresses) evicts the least recently used: memory is bounded."""
    clock = Clock()
    buckets = TokenBuckets(clock=clock, max_entries=3)
    for key in ("a", "b", "c"):
        assert not spend(buckets, key, 2, rate=0.001, burst=1)[1]  # all busy, none idle
    buckets.take("a", 0.001, 1)  # "a" is now the most recently used
    for n in range(1000):
        buckets.take(f"flood{n}", 0.001, 1)
        assert len(buckets) <= 3
    assert "flood999" in buckets
    assert "b" not in buckets and "c" not in buckets


def test_refusal_windows_block_beyond_the_budget_until_the_window_ends() -> None:
    clock = Clock()
    windows = RefusalWindows(3, window=60, clock=clock)
    for _ in range(3):
        assert windows.check("addr") is None
        windows.count("addr")
    first = windows.check("addr")
    assert first is not None
    assert (first.retry_after, first.report, first.refused) == (60, True, 3)
    clock.advance(45.5)
    later = windows.check("addr")
    assert later is not None
    assert (later.retry_after, later.report, later.elapsed, later.length) == (15, False, 45.5, 60)
    assert windows.check("other") is None  # another address is not limited
    clock.advance(14.5)  # the window is over: a fresh budget
    assert windows.check("addr") is None
    windows.count("addr")
    assert windows.check("addr") is None


def test_a_new_window_is_reported_again() -> None:
    clock = Clock()
    windows = RefusalWindows(1, window=60, clock=clock)
    windows.count("addr")
    assert [w.report for w in (windows.check("addr"), windows.check("addr")) if w] == [True, False]
    clock.advance(60)
    windows.count("addr")
    again = windows.check("addr")
    assert again is not None and again.report


def test_a_budget_of_zero_is_no_limit() -> None:
    windows = RefusalWindows(0, clock=Clock())
    for _ in range(100):
        windows.count("addr")
    assert windows.check("addr") is None
    assert len(windows) == 0


def test_ended_windows_are_dropped_and_the_table_is_capped() -> None:
    clock = Clock()
    windows = RefusalWindows(1, window=60, clock=clock, max_entries=5)
    for n in range(3):
        windows.count(f"old{n}")
    clock.advance(61)
    windows.count("new")
    assert len(windows) == 1
    for n in range(100):
        windows.count(f"flood{n}")
        assert len(windows) <= 5


def test_rate_limits_use_the_settings_and_an_apps_own_values() -> None:
    clock = Clock()
    settings = Settings(site="test", rate_limit_token_per_minute=2, rate_limit_writes_per_second=1)
    limits = RateLimits(settings, clock=clock)
    by_address = [limits.token_request_by_address("d", "10.0.0.1").allowed for _ in range(3)]
    assert by_address == [True, True, False]
    assert limits.token_request_by_address("d", "10.0.0.2").allowed
    assert limits.token_request_by_address("e", "10.0.0.1").allowed  # per domain

    generous = AppLimits(token_per_minute=5, writes_per_second=0)
    claims = [limits.token_request_by_client("d", "epd", generous).allowed for _ in range(6)]
    assert claims == [True] * 5 + [False]
    assert [limits.write("d", "epd", generous).allowed for _ in range(50)] == [True] * 50
    assert [limits.write("d", "module", None).allowed for _ in range(2)] == [True, False]
    clock.advance(1)
    assert limits.write("d", "module", None).allowed
    assert limits.writes_per_second(AppLimits(token_per_minute=5)) == 1  # the setting's


def test_by_default_writes_are_not_limited() -> None:
    limits = RateLimits(Settings(site="test"), clock=Clock())
    assert all(limits.write("d", "epd", None).allowed for _ in range(10_000))
    assert len(limits.writes) == 0


@pytest.mark.parametrize("max_entries", [0, -1])
def test_a_table_holds_at_least_one_key(max_entries: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        TokenBuckets(max_entries=max_entries)
    with pytest.raises(ValueError, match="at least 1"):
        RefusalWindows(1, max_entries=max_entries)
