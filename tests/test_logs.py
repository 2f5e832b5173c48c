"""The log configuration and formatters (hub.logs): fields, one line each, never a secret."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from hub import logs, trace
from hub.logs import JsonFormatter, TextFormatter, dict_config, redact

BSN = "123456782"  # passes the eleven-test
NOT_A_BSN = "123456789"  # does not
JWT = "eyJhbGciOiJSUzUxMiJ9.eyJzdWIiOiJ4aXMifQ.c2lnbmF0dXJl"
PEM = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----"


def record(message: str, *args: object, **extra: Any) -> logging.LogRecord:
    made = logging.LogRecord("hub.test", logging.WARNING, __file__, 1, message, args, None)
    for name, value in extra.items():
        setattr(made, name, value)
    return made


@pytest.fixture
def in_a_request() -> Iterator[trace.TraceIds]:
    """A request's trace ids and log fields, as the middleware sets them."""
    ids = trace.TraceIds("req-1", "trace-1", "corr-1")
    trace_token = trace.current.set(ids)
    log_token = logs.open_request("test")
    logs.note(client_id="xis")
    yield ids
    logs.close_request(log_token)
    trace.current.reset(trace_token)


def test_a_json_line_has_the_fields_and_the_request_context(in_a_request: trace.TraceIds) -> None:
    line = json.loads(
        JsonFormatter().format(record("%s happened", "it", **logs.fields(attempt=2, gone=None)))
    )
    assert line.pop("time").endswith("Z")
    assert line == {
        "level": "warning",
        "logger": "hub.test",
        "message": "it happened",
        "request_id": "req-1",
        "trace_id": "trace-1",
        "correlation_id": "corr-1",
        "domain": "test",
        "client_id": "xis",
        "attempt": 2,  # a line's own fields; None ones are left out
    }


def test_outside_a_request_a_line_names_no_request() -> None:
    line = json.loads(JsonFormatter().format(record("housekeeping")))
    assert set(line) == {"time", "level", "logger", "message"}


def test_a_text_line_is_one_line_with_its_context(in_a_request: trace.TraceIds) -> None:
    text = TextFormatter().format(record("a path with\na newline\r\x1b[31m"))
    assert "\n" not in text and "\r" not in text and "\x1b" not in text
    assert text.endswith(
        r"hub.test: a path with\x0aa newline\x0d\x1b[31m "
        "[domain=test client_id=xis request_id=req-1 trace_id=trace-1 correlation_id=corr-1]"
    )


def test_an_exception_is_one_json_line(in_a_request: trace.TraceIds) -> None:
    try:
        raise ValueError(f"bad token {JWT}")
    except ValueError:
        failed = record("failed")
        failed.exc_info = sys.exc_info()
    formatted = JsonFormatter().format(failed)
    assert "\n" not in formatted
    line = json.loads(formatted)
    assert (
        "Traceback" in line["exception"] and "ValueError: bad token [redacted]" in line["exception"]
    )
    assert JWT not in formatted


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (f"token {JWT} refused", "token [redacted] refused"),
        ("Authorization: Bearer abcdefghijklmnop", "Authorization: Bearer [redacted]"),
        (f"key {PEM} read", "key [redacted] read"),
        ("-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEI", "[redacted]"),
        (f"identifier {BSN} twice: {BSN}", "identifier [redacted] twice: [redacted]"),
        (f"http://x/Patient?identifier=x|{BSN}", "http://x/Patient?identifier=x|[redacted]"),
        (f"outbox row {NOT_A_BSN}, 1234567820", f"outbox row {NOT_A_BSN}, 1234567820"),
        # Nine digits inside a UUID that happen to pass the eleven-test stay.
        (
            "request 65c3d69e-844c-4e49-b026-7c758390464e",
            "request 65c3d69e-844c-4e49-b026-7c758390464e",
        ),
        ("mail to jan@example.nl refused", "mail to [redacted] refused"),
        ("a bearer secret is required", "a bearer secret is required"),
    ],
)
def test_redaction(text: str, shown: str) -> None:
    assert redact(text) == shown


def test_every_formatter_redacts_message_fields_and_context(in_a_request: trace.TraceIds) -> None:
    logs.note(client_id=BSN)  # nothing a request brings is trusted
    made = record("got %s", JWT, **logs.fields(error=f"patient {BSN}"))
    for formatter in (JsonFormatter(), TextFormatter()):
        formatted = formatter.format(made)
        assert JWT not in formatted and BSN not in formatted, formatted


@pytest.mark.parametrize("form", ["text", "json"])
def test_the_configuration_routes_every_logger_through_one_format(
    form: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    saved = logging.root.handlers[:], logging.root.level
    try:
        logging.config.dictConfig(dict_config("info", form))
        logging.getLogger("hub.delivery").info("delivered")
        logging.getLogger("uvicorn.error").info("Started server process")
        logging.getLogger("uvicorn.access").info("uvicorn's own access line")
        logging.getLogger("apscheduler.scheduler").info("Added job")
        logging.getLogger("hub.delivery").debug("below the level")
    finally:
        logging.root.handlers[:], level = saved
        logging.root.setLevel(level)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2, lines
    if form == "json":
        assert [json.loads(line)["logger"] for line in lines] == ["hub.delivery", "uvicorn.error"]
    else:
        assert "INFO hub.delivery: delivered" in lines[0]
        assert "INFO uvicorn.error: Started server process" in lines[1]


def test_a_bad_format_or_level_is_refused() -> None:
    with pytest.raises(ValueError, match="log format 'xml'"):
        dict_config("info", "xml")
    with pytest.raises(ValueError, match="log level 'loud'"):
        dict_config("loud", "text")


def test_the_user_of_a_url_is_no_email_address() -> None:
    url = "postgresql+asyncpg://hub@db.example.nl/hub"
    assert redact(url) == url
