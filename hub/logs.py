"""The hub's log lines: configured once per process, as text or JSON, never with a secret.

`dict_config(level, format)` is the `logging.config.dictConfig` of a hub process:
`hub serve` hands it to uvicorn (which applies it in every worker process it
starts, and routes its own lines through it), `hub worker` applies it itself.
Tests and embedders that never call it keep Python's defaults.

Every line names, where known, the request it belongs to: `request_id`,
`trace_id` and `correlation_id` from `hub.trace.current`, `domain` and
`client_id` from the request's log fields (`open_request`, `note`). A log
call adds structured fields of its own with `extra=fields(...)`; a JSON line
carries them as keys, a text line only its message (which says the same).

No line carries a token, a key, a BSN or a message body: the hub logs no
bodies and no credentials, and as a last line of defence every message and
traceback is redacted (`redact`): JWTs, `Bearer` credentials, PEM private keys,
e-mail addresses and nine-digit numbers that pass the BSN eleven-test are
replaced.
"""

from __future__ import annotations

import json
import logging
import logging.config
import re
from collections.abc import Mapping
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Any

from hub import trace
from hub.settings import LOG_FORMATS, LOG_LEVELS

_FIELDS = "hub_fields"  # the LogRecord attribute `fields()` sets

# The current request's fields (domain, client_id): one dict per request, set by the
# outermost middleware, so what a layer below learns (the caller) reaches every line.
_request: ContextVar[dict[str, str] | None] = ContextVar("hub_log_request", default=None)


def fields(**values: object) -> dict[str, Any]:
    """`extra=` for a log call: structured fields of a JSON line (None values are left out)."""
    return {_FIELDS: {name: value for name, value in values.items() if value is not None}}


def open_request(domain: str | None) -> Token[dict[str, str] | None]:
    """Start a request's log fields (its domain, if known); `close_request` ends them."""
    return _request.set({"domain": domain} if domain else {})


def close_request(token: Token[dict[str, str] | None]) -> dict[str, str]:
    """End the request's log fields; what they were (for its access line)."""
    found = _request.get() or {}
    _request.reset(token)
    return found


def note(**values: str) -> None:
    """Add fields (e.g. the authenticated `client_id`) to the current request's lines."""
    current = _request.get()
    if current is not None:
        current.update((name, value) for name, value in values.items() if value)


# --- redaction ------------------------------------------------------------------------------

_SECRET = re.compile(
    # A JWS or JWT in compact form: an access token, a client assertion.
    r"eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*"
    # An Authorization header's credentials.
    r"|(?i:bearer)\s+[A-Za-z0-9._~+/=-]{8,}"
    # A PEM private key.
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)",
    re.DOTALL,
)
# Nine digits on their own: not part of a longer word, as in a UUID's "7c758390464e".
_NINE_DIGITS = re.compile(r"(?<![0-9A-Za-z])[0-9]{9}(?![0-9A-Za-z])")
# An e-mail address (a patient's, in a mail server's refusal); not the user of a URL.
_EMAIL = re.compile(r"(?<![\w/:.%+-])[\w.%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _passes_eleven_test(digits: str) -> bool:
    """The BSN check: 9·d1 + 8·d2 + … + 2·d8 - d9 is a multiple of 11."""
    total = sum(int(d) * weight for d, weight in zip(digits[:8], range(9, 1, -1), strict=True))
    return (total - int(digits[8])) % 11 == 0


def _secret(match: re.Match[str]) -> str:
    text = match.group(0)
    if text[:6].lower() == "bearer":
        return text[:6] + " [redacted]"
    return "[redacted]"


def _bsn(match: re.Match[str]) -> str:
    return "[redacted]" if _passes_eleven_test(match.group(0)) else match.group(0)


def redact(text: str) -> str:
    """`text` without tokens, credentials, private keys, BSNs or e-mail addresses."""
    if "eyJ" in text or "earer" in text or "PRIVATE KEY" in text:
        text = _SECRET.sub(_secret, text)
    if "@" in text:
        text = _EMAIL.sub("[redacted]", text)
    return _NINE_DIGITS.sub(_bsn, text)


def _one_line(text: str) -> str:
    """Control characters escaped: what a request put in a line cannot start another."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group(0)):02x}", text)


# --- formatters -----------------------------------------------------------------------------


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def context(record: logging.LogRecord) -> dict[str, Any]:
    """The fields that say where a line comes from: trace ids, domain, client, then its own."""
    found: dict[str, Any] = {}
    ids = trace.current.get()
    if ids is not None:
        found["request_id"] = ids.request_id
        found["trace_id"] = ids.trace_id
        if ids.correlation_id is not None:
            found["correlation_id"] = ids.correlation_id
    request = _request.get()
    if request:
        found.update(request)
    own: Mapping[str, Any] | None = getattr(record, _FIELDS, None)
    if own:
        found.update(own)
    return found


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, the context, the line's fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for name, value in context(record).items():
            line.setdefault(name, redact(value) if isinstance(value, str) else value)
        if record.exc_info:
            line["exception"] = redact(self.formatException(record.exc_info))
        if record.stack_info:
            line["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(line, default=str)


# Of the context, what a text line shows after its message (the message says the rest).
_TEXT_CONTEXT = ("domain", "client_id", "request_id", "trace_id", "correlation_id")


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message [domain=… request_id=…]`, a traceback below if any."""

    def format(self, record: logging.LogRecord) -> str:
        found = context(record)
        tags = " ".join(f"{name}={found[name]}" for name in _TEXT_CONTEXT if name in found)
        message = _one_line(redact(record.getMessage()))
        text = f"{_timestamp(record)} {record.levelname} {record.name}: {message}"
        if tags:
            text += f" [{_one_line(redact(tags))}]"
        if record.exc_info:
            text += "\n" + redact(self.formatException(record.exc_info))
        if record.stack_info:
            text += "\n" + redact(self.formatStack(record.stack_info))
        return text


_FORMATTERS = {"text": TextFormatter, "json": JsonFormatter}


def dict_config(level: str = "info", format: str = "text") -> dict[str, Any]:
    """The logging configuration of a hub process (`logging.config.dictConfig`).

    Every line goes to stderr in `format`, the hub's loggers and uvicorn's alike;
    uvicorn's access line is off, the hub writes its own (`hub.requests`, without query
    values); APScheduler says only what goes wrong.
    """
    if format not in _FORMATTERS:
        raise ValueError(f"log format {format!r} is not one of {', '.join(LOG_FORMATS)}")
    if level.lower() not in LOG_LEVELS:
        raise ValueError(f"log level {level!r} is not one of {', '.join(LOG_LEVELS)}")
    threshold = level.upper()
    quiet = logging.getLevelName(max(logging.WARNING, logging.getLevelName(threshold)))
    formatter = _FORMATTERS[format]
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"hub": {"()": f"{formatter.__module__}.{formatter.__qualname__}"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "hub",
                "stream": "ext://sys.stderr",
            },
            "none": {"class": "logging.NullHandler"},
        },
        "root": {"level": threshold, "handlers": ["stderr"]},
        "loggers": {
            "uvicorn": {"level": threshold, "handlers": [], "propagate": True},
            "uvicorn.error": {"level": threshold, "handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": ["none"], "propagate": False},
            # Chatty at info (every job run, every migration step): their warnings show.
            **{
                name: {"level": quiet, "handlers": [], "propagate": True}
                for name in ("apscheduler", "alembic")
            },
        },
    }


def configure(level: str = "info", format: str = "text") -> None:
    """Apply `dict_config` to this process (for processes uvicorn does not start)."""
    logging.config.dictConfig(dict_config(level, format))
