"""`make demo` runs end to end and tells the story of one notification, consistently.

The demo is run as `make demo` runs it (`python -m examples.demo`, a process of its
own that starts the hub as another), on ports given by its flags; its output must show
one chain of ids: the XIS's write, the hub's webhook and e-mail caused by it, the
portal's `receive` AuditEvent and fetch caused by the webhook; and, next to the e-mail,
the portal's push to the patient's browser.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.support.hub import REPOSITORY
from tests.support.processes import free_port

pytestmark = [pytest.mark.slow]


def field(pattern: str, text: str) -> str:
    found = re.search(pattern, text, re.MULTILINE)
    assert found is not None, f"{pattern!r} not in the demo's output:\n{text}"
    return found.group(1)


def section(title: str, text: str) -> str:
    start = text.index(f"== {title}")
    end = text.find("\n== ", start + 1)
    return text[start : end if end != -1 else None]


def test_make_demo_shows_the_notification_the_mail_the_push_and_the_trace_chain() -> None:
    # Not 8443, the shipped apps file's port: the demo's hub registers the portal's port.
    hub_port, portal_port = free_port(), free_port()
    portal = f"https://127.0.0.1:{portal_port}"
    result = subprocess.run(
        [
            *(sys.executable, "-m", "examples.demo"),
            *("--hub-port", str(hub_port), "--portal-port", str(portal_port)),
        ],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    output = result.stdout
    assert result.returncode == 0, f"{output}\n{result.stderr}"
    assert "FAILED" not in result.stderr
    assert f"\nhub     http://127.0.0.1:{hub_port}  " in output
    assert f"\nportal  {portal}/  (portal-demo, Subscription/" in output

    xis_request = field(r"^   X-Request-Id: (\S+)$", output)
    trace = field(r"^   X-Trace-Id:   (\S+)$", output)
    communication = field(r"-> 201 (Communication/\S+)$", output)

    webhook = section("The webhook notification the portal got", output)
    assert "  content-length: 0" in webhook
    assert "  authorization: Bearer ***" in webhook  # the shared secret is not printed
    assert field(r"^  x-correlation-id: (\S+)$", webhook) == xis_request
    assert field(r"^  x-trace-id: (\S+)$", webhook) == trace
    notification_request = field(r"^  x-request-id: (\S+)$", webhook)
    assert f"new: {communication}/_history/1" in webhook

    mail = section("The e-mail the catcher got", output)
    assert "To: jan.janssen@example.com" in mail
    assert "Subject: Nieuw bericht voor u / New message for you" in mail
    assert f"\n  {portal}\n" in mail
    assert "Lab results" not in mail and "lab-results" not in mail

    # The push to the patient's browser, next to the e-mail: the same words, no content.
    push = section("The push the portal sent the patient's browser", output)
    push_service = field(r"^push    (https://127\.0\.0\.1:\d+)  ", output)
    assert f"POST {push_service}/push/" in push
    assert "(the push service stand-in answered 201)" in push
    assert "  Content-Encoding: aes128gcm" in push
    assert f"aud {push_service}, sub mailto:portal-demo@example.com" in push
    assert "  Nieuw bericht voor u / New message for you\n" in push
    assert f"(a click opens {portal}/patients/123456782)" in push
    assert "Lab results" not in push and "lab-results" not in push

    assert "1 message(s): 'Lab results available', with 1 attachment(s)" in output

    chain = section("The trace chain", output).splitlines()
    assert f"traceId={trace}" in chain[0]
    create, *effects = chain[1:]
    assert create.startswith(f"  create {communication}/_history/1 by Device/epd-demo  [ok]")
    assert create.endswith(f"X-Request-Id {xis_request}  (patient-notice: new-message)")
    # The hub's two deliveries hang under the write; the portal's fetch under the webhook.
    webhook_line = next(line for line in effects if "transmit webhook" in line)
    assert webhook_line.startswith(f"  └─ transmit webhook to {portal}/koppeltaal/notify")
    assert webhook_line.endswith(f"[ok]  X-Request-Id {notification_request}")
    assert any(
        line.startswith("  └─ transmit e-mail to mailto:jan.janssen@example.com  [ok]")
        for line in effects
    )
    # Under the webhook: the portal's receipt, posting it, then its fetch.
    receipt, posted, fetch = effects[effects.index(webhook_line) + 1 :][:3]
    assert receipt.startswith("     └─ receive, recorded by Device/portal-demo  [ok]  AuditEvent/")
    assert posted.startswith("     └─ create AuditEvent/")
    assert "by Device/portal-demo  [ok]" in posted
    assert fetch.startswith("     └─ search-type ?category=melding")
    assert "by Device/portal-demo  [ok]" in fetch
    assert "Done." in output
