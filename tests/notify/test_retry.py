"""The retry schedule, Retry-After, and failure descriptions."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.net import DeliveryResult
from hub.notify.retry import (
    FAILURES_BEFORE_ERROR,
    RETRY_AFTER_CAP,
    RETRY_WINDOW,
    SCHEDULE,
    describe_failure,
    next_attempt_delay,
    retry_after_delay,
)

START = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
NOMINAL = [5, 30, 120, 600, 1800, 3600, 10800, 10800, 10800]


def delay(
    failures: int, *, retry_after: str | None = None, now: datetime = START, seed: int = 0
) -> timedelta | None:
    return next_attempt_delay(
        failures,
        retry_after=retry_after,
        now=now,
        first_attempt_at=START,
        rng=random.Random(seed),
    )


@pytest.mark.parametrize(("failures", "seconds"), list(enumerate(NOMINAL, start=1)))
def test_each_step_stays_within_20_percent_of_its_nominal_delay(
    failures: int, seconds: int
) -> None:
    delays = [delay(failures, seed=seed) for seed in range(200)]
    spread = [d.total_seconds() for d in delays if d is not None]
    assert len(spread) == 200
    assert min(spread) >= seconds * 0.8
    assert max(spread) <= seconds * 1.2
    assert max(spread) - min(spread) > seconds * 0.2  # there is jitter at all


def test_the_schedule_is_monotone_whatever_the_jitter() -> None:
    for earlier, later in itertools.pairwise(SCHEDULE):
        assert earlier * 1.2 <= later * 0.8


def test_retry_after_in_seconds_wins_when_later_than_the_schedule() -> None:
    honoured = delay(1, retry_after="120")
    assert honoured is not None
    assert timedelta(seconds=120) <= honoured <= timedelta(seconds=144)


def test_retry_after_earlier_than_the_schedule_is_ignored() -> None:
    assert delay(4, retry_after="1") == delay(4)


def test_retry_after_as_an_http_date() -> None:
    asked = format_datetime(START + timedelta(minutes=7), usegmt=True)
    honoured = delay(1, retry_after=asked)
    assert honoured is not None
    assert timedelta(minutes=7) <= honoured <= timedelta(minutes=7) * 1.2


def test_retry_after_is_capped() -> None:
    # The cap is a ceiling, jitter included: a receiver asking for a week is tried after 6 h.
    assert delay(1, retry_after=str(7 * 24 * 3600)) == RETRY_AFTER_CAP


def test_retry_after_just_below_the_cap_is_jittered_up_to_the_cap_only() -> None:
    asked = RETRY_AFTER_CAP - timedelta(minutes=30)
    delays = [delay(1, retry_after=str(int(asked.total_seconds())), seed=s) for s in range(200)]
    assert all(d is not None and asked <= d <= RETRY_AFTER_CAP for d in delays)
    assert RETRY_AFTER_CAP in delays  # jitter that would go beyond stops at the cap
    assert min(d for d in delays if d is not None) < RETRY_AFTER_CAP


CAP = RETRY_AFTER_CAP.total_seconds()
FAR = (
    # (Retry-After, its delay from START in seconds: None when it is unreadable)
    ("0", 0.0),
    ("21600", CAP),  # 6 h exactly
    ("21599", CAP - 1),
    ("21601", CAP),  # 6 h + 1 s
    ("0000000000000000021601", CAP),  # leading zeros do not make it long
    ("00000000000000000000005", 5.0),
    ("100000000000000", CAP),  # overflowed timedelta (days > 999,999,999)
    ("9" * 4300, CAP),  # as long as int() accepts
    ("1" + "0" * 4300, CAP),  # 4,301 digits: int() would refuse it (ValueError)
    ("7" * 100_000, CAP),
    ("-1", None),
    ("-100000000000000", None),
    ("+60", None),
    ("60.0", None),
    ("1e9", None),
    ("\u0661\u0662", None),  # Arabic-Indic digits: str.isdigit(), but not delta-seconds
    ("\u00b2", None),  # superscript two: isdigit() too, int() refuses it
    ("garbage", None),
    ("   ", None),
    ("Sat, 01 Mar 2025 11:00:00 GMT", 0.0),  # an hour in the past
    ("Thu, 01 Jan 1970 00:00:00 GMT", 0.0),
    ("Sat, 01 Mar 2025 17:59:59 GMT", CAP - 1),
    ("Sat, 01 Mar 2025 18:00:01 GMT", CAP),
    ("Sun, 02 Mar 2025 12:00:00 GMT", CAP),
    ("Fri, 31 Dec 9999 23:59:59 GMT", CAP),  # the last day datetime can hold
    ("Fri, 31 Dec 9999 23:59:59 -2359", CAP),  # and beyond it, in UTC
    ("Sat, 01 Mar 99999 12:00:00 GMT", None),  # year out of range (ValueError)
    ("Sat, 01 Mar 2025 12:00:00 +99999999999999999999", None),  # OverflowError inside
    ("Sat, 01 Mar 2025 12:00:00 +9999", None),  # offset beyond ±24 h
    ("Sat, 01 Mar 2025 99:00:00 GMT", None),
)


@pytest.mark.parametrize(("value", "seconds"), FAR, ids=[v[:40] for v, _ in FAR])
def test_retry_after_of_any_size_is_clamped_or_ignored(value: str, seconds: float | None) -> None:
    parsed = retry_after_delay(value, now=START)
    assert (parsed.total_seconds() if parsed is not None else None) == seconds


@pytest.mark.parametrize("value", [v for v, _ in FAR], ids=[v[:40] for v, _ in FAR])
@pytest.mark.parametrize("failures", [1, 4, 7, 20])
def test_no_retry_after_raises_or_makes_a_delay_beyond_the_cap(value: str, failures: int) -> None:
    for seed in range(20):
        waited = delay(failures, retry_after=value, seed=seed)
        assert waited is not None
        assert timedelta(0) < waited <= RETRY_AFTER_CAP


@settings(database=None)
@given(st.text(), st.integers(min_value=1, max_value=40))
def test_any_header_text_gives_a_delay_within_the_cap(value: str, failures: int) -> None:
    parsed = retry_after_delay(value, now=START)
    assert parsed is None or timedelta(0) <= parsed <= RETRY_AFTER_CAP
    waited = delay(failures, retry_after=value)
    assert waited is None or timedelta(0) < waited <= RETRY_AFTER_CAP


@settings(database=None)
@given(st.integers(min_value=0, max_value=10**4000))
def test_any_delta_seconds_gives_a_delay_within_the_cap(seconds: int) -> None:
    expected = RETRY_AFTER_CAP if seconds >= CAP else timedelta(seconds=seconds)
    assert retry_after_delay(str(seconds), now=START) == expected


@settings(database=None)
@given(st.datetimes(min_value=datetime(1000, 1, 1), timezones=st.just(UTC)))
def test_any_http_date_gives_a_delay_within_the_cap(moment: datetime) -> None:
    # (Years below 100 are read the RFC 5322 way, as 19xx/20xx: left out here.)
    parsed = retry_after_delay(format_datetime(moment, usegmt=True), now=START)
    expected = min(max(moment.replace(microsecond=0) - START, timedelta(0)), RETRY_AFTER_CAP)
    assert parsed == expected


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 0 ", 0.0),
        ("Sat, 01 Mar 2025 12:01:00 GMT", 60.0),
        ("Saturday, 01-Mar-25 12:01:00 GMT", 60.0),
        ("Sat Mar  1 12:01:00 2025", 60.0),
        ("Fri, 28 Feb 2025 12:00:00 GMT", 0.0),
        ("-5", None),
        ("1.5", None),
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_values(value: str | None, seconds: float | None) -> None:
    parsed = retry_after_delay(value, now=START)
    assert (parsed.total_seconds() if parsed is not None else None) == seconds


def test_retries_end_two_days_after_the_first_attempt() -> None:
    rng = random.Random(7)
    now, failures, attempts = START, 1, [START]
    while (
        wait := next_attempt_delay(
            failures, retry_after=None, now=now, first_attempt_at=START, rng=rng
        )
    ) is not None:
        now += wait
        attempts.append(now)
        failures += 1
    assert attempts[-1] <= START + RETRY_WINDOW
    assert attempts[-1] > START + RETRY_WINDOW - timedelta(hours=3) * 1.2
    assert all(a < b for a, b in itertools.pairwise(attempts))
    # the first attempt, 6 quick retries, then every 3 h ± 20 % for the remaining ~46 h
    assert 1 + 6 + 12 <= len(attempts) <= 1 + 6 + 20


def test_no_retry_once_the_window_is_over() -> None:
    assert delay(20, now=START + RETRY_WINDOW) is None
    assert delay(20, now=START + RETRY_WINDOW - timedelta(hours=1)) is None
    assert delay(2, now=START + RETRY_WINDOW - timedelta(hours=1)) is not None


def test_a_retry_after_beyond_the_window_ends_the_retries() -> None:
    late = START + RETRY_WINDOW - timedelta(hours=1)
    assert delay(3, now=late, retry_after="7200") is None


def test_failures_count_from_one() -> None:
    with pytest.raises(ValueError, match="starts at 1"):
        delay(0)


def test_three_failures_make_an_error() -> None:
    assert FAILURES_BEFORE_ERROR == 3


@pytest.mark.parametrize(
    ("result", "text"),
    [
        (
            DeliveryResult("https://x.example/hook?token=s3cret", 0.1, status=503),
            "HTTP 503 from https://x.example/hook",
        ),
        (
            DeliveryResult("https://x.example:8443/h", 0.1, status=302),
            "HTTP 302 from https://x.example:8443/h (redirects are not followed)",
        ),
        (
            DeliveryResult("https://x.example/", 0.1, error="connection refused"),
            "connection refused",
        ),
        (
            DeliveryResult("https://x.example/", 15.0, error="timeout after 15 s"),
            "timeout after 15 s",
        ),
    ],
)
def test_describe_failure(result: DeliveryResult, text: str) -> None:
    assert describe_failure(result) == text


def test_describe_failure_keeps_descriptions_short() -> None:
    text = describe_failure(DeliveryResult("https://x.example/", 1.0, error="e" * 2000))
    assert len(text) == 500
    assert text.endswith("…")
