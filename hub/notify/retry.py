"""When to try a failed notification again, and how to describe the failure.

The schedule (docs/architecture.md §4): about 5 s, 30 s, 2 min, 10 min, 30 min, 1 h, then
every 3 h, for 2 days from the first attempt. Each delay is jittered by ±20 % so
that the deliveries that failed together during a receiver's outage do not all
come back at the same instant; the bands do not overlap, so the schedule stays
monotone whatever the jitter. A receiver's `Retry-After` wins when it asks for
later than the schedule, jittered upwards only, so it is never retried sooner
than it asked, up to `RETRY_AFTER_CAP`: no delay is ever longer than six hours,
so a receiver that asks for more (or a mistaken header, however large) is still
tried after six, and cannot silence itself for most of the two-day window.

Whatever the header holds (a number of any size, a sign, garbage, a date
centuries away or beyond what `datetime` can hold), reading it never raises:
an unreadable value is ignored and a readable one is clamped to
[0, `RETRY_AFTER_CAP`] before any arithmetic that could overflow.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit, urlunsplit

from hub.net import DeliveryResult

FAILURES_BEFORE_ERROR = 3
"""Failures in a row after which the Subscription goes to `status = error`."""

SCHEDULE = (
    timedelta(seconds=5),
    timedelta(seconds=30),
    timedelta(minutes=2),
    timedelta(minutes=10),
    timedelta(minutes=30),
    timedelta(hours=1),
    timedelta(hours=3),  # and every 3 hours from here on
)
RETRY_WINDOW = timedelta(days=2)
RETRY_AFTER_CAP = timedelta(hours=6)
JITTER = 0.2

_MAX_DESCRIPTION = 500
# Delta-seconds longer than this many digits exceed the cap whatever they say.
_CAP_DIGITS = len(str(int(RETRY_AFTER_CAP.total_seconds())))


def next_attempt_delay(
    failures: int,
    *,
    retry_after: str | None,
    now: datetime,
    first_attempt_at: datetime,
    rng: random.Random,
    first_delay: timedelta = SCHEDULE[0],
) -> timedelta | None:
    """How long to wait before the next attempt, or None when the retries are over.

    `failures` counts the failed attempts so far (1 after the first failure);
    `first_attempt_at` is when this delivery was first tried; both datetimes are
    timezone-aware. An attempt is only scheduled if it falls within `RETRY_WINDOW`
    of the first attempt, so the last one happens up to ~3 h before the 2 days end.
    `first_delay` scales the whole schedule (`HUB_RETRY_BASE_SECONDS`, for tests);
    the window and `Retry-After` are not scaled.
    """
    if failures < 1:
        raise ValueError(f"failures counts failed attempts and starts at 1, got {failures}")
    step = SCHEDULE[min(failures, len(SCHEDULE)) - 1] * (first_delay / SCHEDULE[0])
    delay = step * rng.uniform(1 - JITTER, 1 + JITTER)
    asked = retry_after_delay(retry_after, now=now)
    if asked is not None and asked > delay:
        # Jittered upwards, then capped: the cap is a ceiling, jitter included.
        delay = min(asked * rng.uniform(1, 1 + JITTER), RETRY_AFTER_CAP)
    if now + delay > first_attempt_at + RETRY_WINDOW:
        return None
    return delay


def retry_after_delay(value: str | None, *, now: datetime) -> timedelta | None:
    """A `Retry-After` header as a delay from `now`: delta-seconds or an HTTP-date.

    None for an absent or unreadable value (a sign, a fraction, garbage, a date
    `datetime` cannot hold); otherwise a delay clamped to [0, `RETRY_AFTER_CAP`]:
    a date in the past is a zero delay, anything beyond the cap is the cap. Never
    raises, however large the value: the digits are compared before they are
    converted (Python refuses `int()` of more than 4,300 digits, and `timedelta`
    overflows at a billion days). `now` is timezone-aware.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        digits = value.lstrip("0") or "0"
        if len(digits) > _CAP_DIGITS:
            return RETRY_AFTER_CAP
        return min(timedelta(seconds=int(digits)), RETRY_AFTER_CAP)
    try:
        moment = parsedate_to_datetime(value)
        if moment.tzinfo is None:  # the asctime form carries no zone; HTTP-dates are GMT
            moment = moment.replace(tzinfo=UTC)
        delay = moment - now
    except (TypeError, ValueError, ArithmeticError):
        # e.g. a year beyond 9999 (ValueError), or a zone offset too large for a C int
        # (OverflowError, an ArithmeticError)
        return None
    return min(max(delay, timedelta(0)), RETRY_AFTER_CAP)


def describe_failure(result: DeliveryResult) -> str:
    """One line for Subscription.error and AuditEvent.outcomeDesc.

    The endpoint is shown without its query string, which may carry a secret.
    """
    if result.status is not None:
        parts = urlsplit(result.url)
        endpoint = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        text = f"HTTP {result.status} from {endpoint}"
        if 300 <= result.status < 400:
            text += " (redirects are not followed)"
    else:
        text = result.error or "delivery failed"
    return text if len(text) <= _MAX_DESCRIPTION else text[: _MAX_DESCRIPTION - 1] + "…"
