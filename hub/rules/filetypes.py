"""Attachment content types of the notification contract, checked against the bytes.

A declared `contentType` is only a claim. The patient opens the file on a phone or a
home computer, so we look at the bytes themselves (their "magic" signature) and refuse
a file that is not what it says it is: an executable renamed to `.pdf`, a PNG labelled
as JPEG, an arbitrary ZIP labelled as a Word document.

Limits, on purpose: the legacy Office formats (.doc, .xls) share one container, the OLE2
compound file; telling them apart needs a walk of the container's directory, which we
do not do, so either declared type accepts any compound file. The OOXML formats (.docx,
.xlsx) are ZIP archives and are told apart by their part names.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable

PDF = "application/pdf"
JPEG = "image/jpeg"
PNG = "image/png"
DOC = "application/msword"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
XLS = "application/vnd.ms-excel"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"

# The contract's list, in its order (diagnostics list them in this order). Matching is
# exact: the contract enumerates these spellings, without parameters.
ALLOWED_CONTENT_TYPES: tuple[str, ...] = (PDF, JPEG, PNG, DOC, DOCX, XLS, XLSX)

_PDF_MAGIC = b"%PDF-"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_ZIP_MAGIC = b"PK\x03\x04"
_EXECUTABLE_MAGICS = (b"MZ", b"\x7fELF", b"\xcf\xfa\xed\xfe", b"\xca\xfe\xba\xbe", b"#!")

# Every OOXML package (Open Packaging Conventions) holds this part at its root.
_OPC_CONTENT_TYPES = "[Content_Types].xml"


def has_content_type(data: bytes, content_type: str) -> bool:
    """True when `data` really is a file of the (allowed) `content_type`."""
    check = _CHECKS.get(content_type)
    return check is not None and check(data)


def type_name(content_type: str) -> str:
    """How diagnostics name an allowed content type ("a PDF document")."""
    return _NAMES.get(content_type, content_type)


def describe(data: bytes) -> str:
    """A short human description of what `data` looks like, for diagnostics."""
    for content_type in (PDF, JPEG, PNG, DOCX, XLSX):
        if has_content_type(data, content_type):
            return _NAMES[content_type]
    if data.startswith(_OLE2_MAGIC):
        return "an Office 97-2003 document"
    if data.startswith(_ZIP_MAGIC):
        return "a ZIP archive"
    if data.startswith(_EXECUTABLE_MAGICS):
        return "an executable program"
    if not data:
        return "empty"
    return "of an unrecognised type"


def _is_pdf(data: bytes) -> bool:
    # Readers tolerate the header anywhere in the first kilobyte, which is what makes
    # PDF/executable polyglots possible; we insist on it at the very start.
    return data.startswith(_PDF_MAGIC)


def _is_png(data: bytes) -> bool:
    return data.startswith(_PNG_MAGIC)


def _is_jpeg(data: bytes) -> bool:
    return data.startswith(_JPEG_MAGIC)


def _is_ole2(data: bytes) -> bool:
    return data.startswith(_OLE2_MAGIC)


def _ooxml_with(folder: str) -> Callable[[bytes], bool]:
    def check(data: bytes) -> bool:
        # The local-header signature at offset 0 matters: zipfile finds the central
        # directory from the END, so without it a self-extracting executable (an .exe
        # with a ZIP appended) would pass.
        if not data.startswith(_ZIP_MAGIC):
            return False
        names = _zip_member_names(data)
        return (
            names is not None
            and _OPC_CONTENT_TYPES in names
            and any(name.startswith(folder) for name in names)
        )

    return check


def _zip_member_names(data: bytes) -> set[str] | None:
    """The names in the ZIP's central directory, or None when it is not a readable ZIP.

    Only the directory is read, nothing is decompressed, so a ZIP bomb costs nothing.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return set(archive.namelist())
    # zipfile reports a damaged directory as BadZipFile mostly, but some corruptions
    # surface as ValueError or EOFError; all mean "not a usable ZIP".
    except (zipfile.BadZipFile, ValueError, EOFError, NotImplementedError):
        return None


_CHECKS: dict[str, Callable[[bytes], bool]] = {
    PDF: _is_pdf,
    JPEG: _is_jpeg,
    PNG: _is_png,
    DOC: _is_ole2,
    DOCX: _ooxml_with("word/"),
    XLS: _is_ole2,
    XLSX: _ooxml_with("xl/"),
}

_NAMES: dict[str, str] = {
    PDF: "a PDF document",
    JPEG: "a JPEG image",
    PNG: "a PNG image",
    DOC: "a Word 97-2003 document (.doc)",
    DOCX: "a Word document (.docx)",
    XLS: "an Excel 97-2003 workbook (.xls)",
    XLSX: "an Excel workbook (.xlsx)",
}
