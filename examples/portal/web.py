"""What the patient sees: plain server-rendered HTML, and attachments to download.

Everything that came from the XIS is data, never markup: every value passes through
`html.escape`, and the pages forbid scripts altogether (Content-Security-Policy), except
the portal's own two when push notifications are on: the inbox's opt-in script and the
service worker, both from the portal's origin (no inline script, no eval). An
attachment is served with the content type the hub checked against its bytes, as a
download (never rendered inline), under a file name that cannot reach outside the
download folder nor pass for another kind of file.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any
from urllib.parse import quote

from hub.rules import filetypes
from hub.rules.notification import decode_base64

# The extensions a download may carry for each content type of the contract; the
# first is added when the title has none of them ("report.exe" -> "report.exe.pdf").
EXTENSIONS: Mapping[str, tuple[str, ...]] = {
    filetypes.PDF: (".pdf",),
    filetypes.JPEG: (".jpg", ".jpeg"),
    filetypes.PNG: (".png",),
    filetypes.DOC: (".doc",),
    filetypes.DOCX: (".docx",),
    filetypes.XLS: (".xls",),
    filetypes.XLSX: (".xlsx",),
}
_UNSAFE = re.compile(r'[\\/:*?"<>|;%\x00-\x1f\x7f]')
_WINDOWS_DEVICES = re.compile(r"(?i)(con|prn|aux|nul|com\d|lpt\d)(\..*)?")
_MAX_NAME = 100

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Medical information: no copies in shared or browser caches.
    "Cache-Control": "no-store",
}
# The inbox with the push opt-in: scripts, fetches and the service worker from this
# origin only; markup from the XIS still cannot run anything.
PUSH_PAGE_HEADERS = {
    **SECURITY_HEADERS,
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; connect-src 'self'; "
    "worker-src 'self'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
}
SCRIPT_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    # A browser checks for a new service worker at least daily anyway; "no-cache" makes
    # every check (and the page's script) revalidate, so a fix reaches it at once.
    "Cache-Control": "no-cache",
}
API_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}


# -- attachments ----------------------------------------------------------------------


def download_type(declared: Any) -> str:
    """The content type to serve: the declared one if the contract allows it."""
    return declared if declared in filetypes.ALLOWED_CONTENT_TYPES else "application/octet-stream"


def safe_filename(title: Any, content_type: str) -> str:
    """A download name made of the attachment's title, safe on every operating system.

    Only the last path component survives; control and reserved characters become
    `_`; leading dots go (no hidden files), as do trailing dots and spaces (Windows
    drops them); device names get a prefix; the length is bounded; and the name ends
    in an extension of `content_type`, so it opens with the right program.
    """
    name = unicodedata.normalize("NFC", title if isinstance(title, str) else "")
    name = re.split(r"[\\/]", name)[-1]
    name = _UNSAFE.sub("_", "".join(c if c.isprintable() else "_" for c in name))
    name = " ".join(name.split()).lstrip(".").rstrip(". ")
    if _WINDOWS_DEVICES.fullmatch(name):
        name = f"_{name}"
    extensions = EXTENSIONS.get(content_type, ())
    if extensions and not name.lower().endswith(extensions):
        name = f"{name}{extensions[0]}"
    if not name or name.lower() in extensions:
        name = f"attachment{name}"
    stem, dot, extension = name.rpartition(".")
    if len(name) > _MAX_NAME:
        name = f"{stem[: _MAX_NAME - len(extension) - 1]}.{extension}" if dot else name[:_MAX_NAME]
    return name


def content_disposition(filename: str) -> str:
    """`attachment` with an ASCII fallback name and the exact UTF-8 one (RFC 6266)."""
    ascii_name = unicodedata.normalize("NFKD", filename).encode("ascii", "ignore").decode()
    ascii_name = re.sub(r"[^A-Za-z0-9._ ()-]", "_", ascii_name) or "attachment"
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


def attachment_of(communication: Mapping[str, Any], index: int) -> tuple[bytes, str, str] | None:
    """(data, content type, file name) of the attachment at `payload[index]`, if any."""
    payload = communication.get("payload") or []
    if not 0 <= index < len(payload):
        return None
    file = payload[index].get("contentAttachment")
    if not isinstance(file, Mapping) or not isinstance(file.get("data"), str):
        return None
    data = decode_base64(file["data"])
    if data is None:
        return None
    content_type = download_type(file.get("contentType"))
    return data, content_type, safe_filename(file.get("title"), content_type)


# -- pages ----------------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 46rem; margin: 2rem auto; padding: 0 1rem; }
article { border: 1px solid #ccc; border-radius: .5rem; padding: 1rem; margin: 1rem 0; }
.text { white-space: pre-wrap; } .when { color: #666; font-size: .9rem; }
"""


def page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="nl"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>\n"
        f"<body><h1>{escape(title)}</h1>\n{body}\n</body></html>\n"
    )


def home_page(problem: str | None = None) -> str:
    error = f'<p role="alert">{escape(problem)}</p>' if problem else ""
    return page(
        "Demo patient portal",
        f"{error}<p>This demo has no patient login: anyone who can reach it reads any inbox. "
        "It listens on this computer only.</p>"
        '<form method="get" action="/inbox"><label>BSN <input name="bsn" '
        'inputmode="numeric" autocomplete="off" required></label> '
        "<button>Open the inbox</button></form>",
    )


def inbox_page(bsn: str, communications: Sequence[Mapping[str, Any]], *, push: bool = False) -> str:
    """The patient's messages; with `push`, the offer to be notified on this device."""
    opt_in = _push_opt_in(bsn) if push else ""
    if not communications:
        return page("Your messages", f"{opt_in}<p>There are no messages for you.</p>")
    return page("Your messages", opt_in + "\n".join(_message(bsn, c) for c in communications))


def _push_opt_in(bsn: str) -> str:
    """The button push.js brings to life (it stays disabled without JavaScript)."""
    return (
        '<section class="push"><p><button type="button" id="push-opt-in" disabled '
        f'data-bsn="{escape(bsn)}">Meld nieuwe berichten op dit apparaat / '
        "Notify me of new messages on this device</button> "
        '<span id="push-status" role="status"></span></p></section>\n'
        '<script src="/push.js" defer></script>\n'
    )


def _message(bsn: str, communication: Mapping[str, Any]) -> str:
    topic = (communication.get("topic") or {}).get("text", "")
    when = communication.get("sent") or (communication.get("meta") or {}).get("lastUpdated", "")
    parts = [f"<article><h2>{escape(str(topic))}</h2>", f'<p class="when">{escape(str(when))}</p>']
    files = []
    for index, entry in enumerate(communication.get("payload") or []):
        if "contentString" in entry:
            parts.append(f'<p class="text">{escape(str(entry["contentString"]))}</p>')
        found = attachment_of(communication, index) if "contentAttachment" in entry else None
        if found is not None:
            data, content_type, filename = found
            href = (
                f"/patients/{quote(bsn)}/messages/{quote(str(communication['id']))}"
                f"/attachments/{index}"
            )
            files.append(
                f'<li><a href="{escape(href)}" download>{escape(filename)}</a> '
                f"({escape(content_type)}, {len(data):,} bytes)</li>"
            )
    if files:
        parts.append("<ul>" + "".join(files) + "</ul>")
    return "\n".join([*parts, "</article>"])


def registration_page() -> str:
    return page(
        "Register",
        "<p>Here a patient would create an account (with DigiD in real life). "
        "Registration is not part of this demo.</p>",
    )
