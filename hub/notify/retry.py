"""When to try a failed notification again, and how to describe the failure.

The schedule (docs/architecture.md §4): about 5 s, 30 s, 2 min, 10 min, 30 min, 1 h, then
every 3 h, for 2 days from the first attempt. Each delay is jittered by ±20 % so
that the deliveries that failed together during a receiver's outage do not all
come back at the same instant; the bands do not overlap, so the schedule stays
monotone whatever the jitter. A receiver's `Retry-After` wins when it asks for
later than the schedule, jittered upwards only, so it is never retried sooner
than it asked, up to `RETRY_AFTER_CAP`: a receiver that asks for more than six
hours is still tried after six, so a mistaken header cannot silence it for
most of the two-day window.
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
        delay = min(asked, RETRY_AFTER_CAP) * rng.uniform(1, 1 + JITTER)
    if now + delay > first_attempt_at + RETRY_WINDOW:
        return None
    return delay


def retry_after_delay(value: str | None, *, now: datetime) -> timedelta | None:
    """A `Retry-After` header as a delay from `now`: delta-seconds or an HTTP-date.

    None for an absent or unreadable value; a date in the past is a zero delay.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return timedelta(seconds=int(value))
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:  # the asctime form carries no zone; HTTP-dates are GMT
        moment = moment.replace(tzinfo=UTC)
    return max(moment - now, timedelta(0))


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
