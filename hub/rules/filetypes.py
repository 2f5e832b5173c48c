"""Attachment content types of the notification contract, checked against the bytes.

A declared `contentType` is only a claim. The patient opens the file on a phone or a
home computer, so we look at the bytes themselves (their "magic" signature) and refuse
a file that is not what it says it is: an executable renamed to `.pdf`, a PNG labelled
as JPEG, an arbitrary ZIP labelled as a Word document.

Limits, on purpose: the legacy Office formats (.doc, .xls) share one container, the OLE2
compound file; telling them apart needs a walk of the container's directory, which we
do not do, so either declared type accepts any compound file. The OOXML formats (.docx,
.xlsx) are ZIP archives and are told apart by their part names.

A file can be what it says and still carry something else: a polyglot. `hazards` looks
for what rides along in a file that passed the magic-byte check: a PDF's scripts,
launch actions and embedded files, bytes appended after a file's end marker (an
executable after a PDF's `%%EOF`, HTML after a JPEG's EOI or a PNG's IEND), macros and
embedded programs in Office documents. `title_problems` checks the file name shown to
the patient and used as the download name. Every check is bounded: it reads each byte a
fixed number of times, decompresses at most a fixed budget, and never trusts a declared
size (zip bombs cost nothing).
"""

from __future__ import annotations

import io
import re
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator

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


# -- what rides along: polyglots, active content, archive bombs -------------------------

# A reader only sees what the parsers below see; everything larger than these limits is
# refused rather than inspected partly.
MAX_ZIP_ENTRIES = 2_000
MAX_ZIP_UNCOMPRESSED_BYTES = 256 * 1024 * 1024  # the sum of the declared sizes
MAX_ZIP_COMPRESSION_RATIO = 100  # per entry, as Apache POI's zip-bomb guard
_ZIP_RATIO_FLOOR = 64 * 1024  # smaller entries cannot be bombs worth the name
MAX_CONTENT_TYPES_BYTES = 256 * 1024  # [Content_Types].xml is read up to this
MAX_INFLATED_PDF_BYTES = 16 * 1024 * 1024  # object streams, inflated, in total
MAX_IMAGE_SEGMENTS = 50_000  # JPEG segments or PNG chunks
_EMBEDDED_HEAD_BYTES = 64  # what we read of an embedded file to see what it is
_MAX_EMBEDDED_READS = 100

# Bytes that may follow a file's end marker: padding some writers add, nothing else.
_PADDING = b"\x00\xff\t\n\x0c\r "
_PDF_WHITESPACE = b"\x00\t\n\x0c\r "

# File-name extensions of programs and of content a computer runs when opened.
EXECUTABLE_EXTENSIONS = frozenset(
    {
        "exe", "dll", "com", "scr", "pif", "cpl", "msi", "msp", "msc", "bat", "cmd",
        "ps1", "psm1", "vbs", "vbe", "js", "jse", "wsf", "wsh", "hta", "jar", "lnk",
        "reg", "inf", "sh", "app", "apk", "html", "htm", "xhtml", "svg",
        "docm", "dotm", "xlsm", "xltm", "xlam", "xlsb", "pptm", "ppam",
    }
)  # fmt: skip

# The extensions a title may end in for each allowed content type.
_TYPE_EXTENSIONS: dict[str, frozenset[str]] = {
    PDF: frozenset({"pdf"}),
    JPEG: frozenset({"jpg", "jpeg", "jpe", "jfif"}),
    PNG: frozenset({"png"}),
    DOC: frozenset({"doc"}),
    DOCX: frozenset({"docx"}),
    XLS: frozenset({"xls"}),
    XLSX: frozenset({"xlsx"}),
}
_KNOWN_EXTENSIONS = frozenset().union(*_TYPE_EXTENSIONS.values())

# Characters that change the direction text is shown in: "invoice\u202efdp.exe" shows
# as "invoiceexe.pdf".
_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


def hazards(data: bytes, content_type: str) -> list[str]:
    """Why a file that really is `content_type` is refused anyway; empty when it is not.

    Each reason is a phrase for a diagnostic ("the PDF contains JavaScript ...").
    Never raises, whatever `data` holds.
    """
    check = _HAZARD_CHECKS.get(content_type)
    return [] if check is None else list(dict.fromkeys(check(data)))


def title_problems(title: str, content_type: str | None) -> list[str]:
    """Why `title`, the file name the patient sees and downloads, is refused.

    `content_type` is the attachment's (allowed) declared type, or None when it is not
    known; only then is a title's extension not compared with it. A title without an
    extension, or with one we do not know, is fine: the contract does not require one.
    """
    problems: list[str] = []
    if "/" in title or "\\" in title:
        problems.append("contains a path separator ('/' or '\\')")
    if ".." in title:
        problems.append("contains '..'")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in title):
        problems.append("contains control characters (such as CR, LF or NUL)")
    if any(c in _BIDI_CONTROLS for c in title):
        problems.append("contains text-direction characters, which can disguise its extension")
    if not title.strip(" ."):
        problems.append("is no file name (only dots or spaces)")
        return problems
    if title != title.rstrip(" ."):
        problems.append(
            "ends in a dot or a space (Windows drops those, which can reveal another extension)"
        )
    parts = title.rstrip(" .").split(".")
    extension = parts[-1].strip().lower() if len(parts) > 1 else ""
    if extension in EXECUTABLE_EXTENSIONS:
        if len(parts) > 2:
            problems.append(
                f"has a double extension whose last part, .{extension}, is a type a computer "
                "runs when the file is opened"
            )
        else:
            problems.append(
                f"has the extension .{extension}, a type a computer runs when the file is opened"
            )
    elif (
        content_type in _TYPE_EXTENSIONS
        and extension in _KNOWN_EXTENSIONS
        and extension not in _TYPE_EXTENSIONS[content_type]
    ):
        expected = " or ".join(f".{e}" for e in sorted(_TYPE_EXTENSIONS[content_type]))
        problems.append(
            f"has the extension .{extension}, which does not match its content type "
            f"{content_type} (expected {expected})"
        )
    return problems


# -- PDF ----------------------------------------------------------------------------------

# A PDF name: a solidus and regular characters (ISO 32000-1, 7.3.5). Any character may be
# written #xx, so /J#61vaScript is /JavaScript; names are compared after unescaping.
_PDF_DELIMITERS = rb"\x00\t\n\x0c\r ()<>\[\]{}/%"
_PDF_NAME = re.compile(rb"/([^" + _PDF_DELIMITERS + rb"]+)")
_PDF_ESCAPED_NAME = re.compile(rb"/([^" + _PDF_DELIMITERS + rb"#]*#[^" + _PDF_DELIMITERS + rb"]*)")
_PDF_NAME_ESCAPE = re.compile(rb"#([0-9A-Fa-f]{2})")
_PDF_ACTIVE_NAMES: dict[bytes, str] = {
    b"JavaScript": "JavaScript",
    b"JS": "JavaScript",
    b"Launch": "a launch action (starts a program)",
    b"EmbeddedFile": "an embedded file",
    b"EmbeddedFiles": "an embedded file",
    b"AA": "automatic actions (/AA)",
    b"RichMedia": "rich media (Flash or video with scripts)",
    b"GoToE": "an action opening an embedded file",
}
_OBJSTM = b"ObjStm"
_NAME_END = rb"(?![^" + _PDF_DELIMITERS + rb"])"
# The watched names as written plainly: found by the regex engine, not a Python loop.
_PDF_ACTIVE_LONGEST_FIRST: list[bytes] = sorted(_PDF_ACTIVE_NAMES, key=len, reverse=True)
_PDF_PLAIN_WATCHED = re.compile(rb"/(" + b"|".join(_PDF_ACTIVE_LONGEST_FIRST) + rb")" + _NAME_END)
_PDF_PLAIN_OBJSTM = re.compile(rb"/" + _OBJSTM + _NAME_END)
MAX_PDF_ESCAPED_NAMES = 10_000  # names written with #xx; fonts use a few, not thousands
MAX_PDF_OBJECT_STREAMS = 10_000
MAX_PDF_UPDATES = 10_000  # %%EOF markers: one per incremental update
_PDF_EOF = re.compile(rb"%%EOF")
# What an incremental update starts with: an object, a cross-reference section, a comment.
_PDF_UPDATE_START = re.compile(rb"\d|%|xref|trailer|startxref")
_PDF_STREAM = re.compile(rb"(?<!end)stream(?:\r\n|\n|\r)")
_PDF_OTHER_FILTERS = (b"ASCIIHexDecode", b"ASCII85Decode", b"LZWDecode", b"RunLengthDecode")


def _unescape(name: bytes) -> bytes:
    return _PDF_NAME_ESCAPE.sub(lambda m: bytes((int(m.group(1), 16),)), name)


def _pdf_names(data: bytes) -> set[bytes]:
    """Every name in `data`, unescaped (for small pieces: a stream's dictionary)."""
    return {_unescape(match.group(1)) for match in _PDF_NAME.finditer(data)}


def _pdf_watched(data: bytes) -> tuple[set[bytes], list[int]] | str:
    """The watched names in `data`, and where each /ObjStm ends; or why we cannot tell."""
    names = set(_PDF_PLAIN_WATCHED.findall(data))
    object_streams: list[int] = []
    for match in _PDF_PLAIN_OBJSTM.finditer(data):
        if len(object_streams) >= MAX_PDF_OBJECT_STREAMS:
            return f"the PDF has more than {MAX_PDF_OBJECT_STREAMS} object streams"
        object_streams.append(match.end())
    for count, match in enumerate(_PDF_ESCAPED_NAME.finditer(data)):
        if count >= MAX_PDF_ESCAPED_NAMES:
            return f"the PDF has more than {MAX_PDF_ESCAPED_NAMES} names written with #-escapes"
        name = _unescape(match.group(1))
        if name == _OBJSTM:
            object_streams.append(match.end())
        elif name in _PDF_ACTIVE_NAMES:
            names.add(name)
    return names, object_streams


def _pdf_hazards(data: bytes) -> Iterator[str]:
    watched = _pdf_watched(data)
    if isinstance(watched, str):
        yield watched
        return
    names, object_streams = watched
    inflated, problem = _pdf_object_streams(data, object_streams)
    if problem:
        yield problem
    inner = _pdf_watched(inflated)
    if isinstance(inner, str):
        yield inner
    else:
        names |= inner[0]
    active = sorted({what for name, what in _PDF_ACTIVE_NAMES.items() if name in names})
    if active:
        yield "the PDF contains " + ", ".join(active) + " (active content is not allowed)"
    ends: list[int] = []
    for match in _PDF_EOF.finditer(data):
        if len(ends) >= MAX_PDF_UPDATES:
            yield f"the PDF has more than {MAX_PDF_UPDATES} %%EOF end markers"
            return
        ends.append(match.end())
    if not ends:
        yield "the PDF has no %%EOF end marker (it is cut short or something is appended)"
        return
    if data[ends[-1] :].strip(_PDF_WHITESPACE):
        yield (
            f"{len(data) - ends[-1]} bytes follow the PDF's last %%EOF end marker "
            "(a file appended to the PDF)"
        )
    for end in ends[:-1]:
        if not _PDF_UPDATE_START.match(data[end : end + 64].lstrip(_PDF_WHITESPACE)):
            yield "data that is no PDF follows a %%EOF end marker (a file hidden in the PDF)"
            break


def _pdf_object_streams(data: bytes, positions: list[int]) -> tuple[bytes, str | None]:
    """The inflated object streams (PDF 1.5 hides objects in them), and a problem if any.

    `positions` are where an /ObjStm name ends; its stream follows within a few hundred
    bytes. At most MAX_INFLATED_PDF_BYTES are inflated in all; a PDF needing more, or
    with a stream we cannot inflate, is refused: we cannot see what it holds.
    """
    if len(positions) > MAX_PDF_OBJECT_STREAMS:
        return b"", f"the PDF has more than {MAX_PDF_OBJECT_STREAMS} object streams"
    budget = MAX_INFLATED_PDF_BYTES
    inflated: list[bytes] = []
    view = memoryview(data)
    done = 0
    for position in sorted(positions):
        stream = _PDF_STREAM.search(data, position, position + 2048)
        if stream is None or stream.start() < done:
            continue  # no stream of its own, or one already inflated
        done = stream.end()
        begin = data.rfind(b"obj", max(0, position - 1024), position)
        names = _pdf_names(data[max(begin, position - 1024, 0) : stream.start()])
        if any(f in names for f in _PDF_OTHER_FILTERS) or (
            b"FlateDecode" not in names and b"Filter" in names
        ):
            return b"", "the PDF has an object stream in an encoding the hub does not inspect"
        if b"FlateDecode" not in names:
            continue  # not encoded: its names were read with the rest of the file
        end = data.find(b"endstream", stream.end())
        try:
            chunk = zlib.decompressobj().decompress(
                view[stream.end() : end if end >= 0 else len(data)], budget + 1
            )
        except zlib.error:
            # Damaged, or encrypted: either way we cannot see what it holds.
            return b"", "the PDF has an object stream the hub cannot read (damaged or encrypted)"
        if len(chunk) > budget:
            return b"", (
                "the PDF's object streams are larger than the hub inspects "
                f"({MAX_INFLATED_PDF_BYTES // (1024 * 1024)} MiB inflated)"
            )
        budget -= len(chunk)
        inflated.append(chunk)
    return b"\n".join(inflated), None


# -- images -------------------------------------------------------------------------------

# A marker: 0xFF, any number of fill bytes 0xFF, then the marker's code.
_JPEG_MARKER = re.compile(rb"\xff+(.)", re.DOTALL)
# The end of a scan's entropy-coded data: a marker other than a stuffed 0xFF00 or RSTn.
_JPEG_SCAN_END = re.compile(rb"\xff+[^\x00\xd0-\xd7\xff]")


def _jpeg_end(data: bytes) -> int | str:
    """Where the JPEG's EOI marker ends, or why it cannot be found."""
    position = 2  # after SOI
    for _ in range(MAX_IMAGE_SEGMENTS):
        match = _JPEG_MARKER.match(data, position)
        if match is None:
            return "the JPEG is cut short or damaged (no end-of-image marker)"
        marker = match.group(1)[0]
        position = match.end()
        if marker == 0xD9:  # EOI
            return position
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # no length follows
            continue
        if marker == 0x00 or position + 2 > len(data):
            return "the JPEG is cut short or damaged (no end-of-image marker)"
        length = int.from_bytes(data[position : position + 2], "big")
        if length < 2:
            return "the JPEG is damaged (a segment of impossible length)"
        position += length
        if marker == 0xDA:  # SOS: entropy-coded data up to the next marker
            scan_end = _JPEG_SCAN_END.search(data, position)
            if scan_end is None:
                return "the JPEG is cut short or damaged (no end-of-image marker)"
            position = scan_end.start()
    return f"the JPEG has more than {MAX_IMAGE_SEGMENTS} segments"


def _png_end(data: bytes) -> int | str:
    """Where the PNG's IEND chunk ends, or why it cannot be found."""
    position = len(_PNG_MAGIC)
    for _ in range(MAX_IMAGE_SEGMENTS):
        if position + 12 > len(data):
            break
        length, kind = struct.unpack_from(">I4s", data, position)
        position += 12 + length
        if kind == b"IEND":
            return position if position <= len(data) else "the PNG is damaged"
    else:
        return f"the PNG has more than {MAX_IMAGE_SEGMENTS} chunks"
    return "the PNG is cut short or damaged (no IEND chunk)"


def _trailing(
    kind: str, marker: str, end: Callable[[bytes], int | str]
) -> Callable[[bytes], Iterator[str]]:
    def check(data: bytes) -> Iterator[str]:
        found = end(data)
        if isinstance(found, str):
            yield found
        elif data[found:].strip(_PADDING):
            yield (
                f"{len(data) - found} bytes follow the {kind}'s {marker} "
                "(another file hidden after the image)"
            )

    return check


# -- Office: OLE2 (.doc, .xls) and OOXML (.docx, .xlsx) -----------------------------------


def _ole2_hazards(data: bytes) -> Iterator[str]:
    # Directory entry names are UTF-16LE; a cheap search finds the macro and package
    # streams without walking the container.
    if "_VBA_PROJECT".encode("utf-16-le") in data:
        yield "the document contains macros (a VBA project)"
    if "\x01Ole10Native".encode("utf-16-le") in data:
        yield "the document contains an embedded package (which can carry a program)"


_MACRO_CONTENT_TYPES = (
    b"macroenabled",
    b"application/vnd.ms-office.vbaproject",
    b"application/vnd.ms-office.activex",
)


def _zip_hazards(data: bytes) -> Iterator[str]:
    problem = _zip_trailer_problem(data)
    if problem:
        yield problem
        return
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            yield from _archive_hazards(archive)
    except (zipfile.BadZipFile, ValueError, EOFError, NotImplementedError, RuntimeError,
            OSError, zlib.error):  # fmt: skip
        yield "the document's ZIP container is damaged"


def _zip_trailer_problem(data: bytes) -> str | None:
    """Read the end-of-central-directory record before zipfile parses the directory."""
    eocd = data.rfind(b"PK\x05\x06", max(0, len(data) - 22 - 0xFFFF))
    if eocd < 0 or eocd + 22 > len(data):
        return "the document's ZIP container is damaged"
    (entries, comment) = struct.unpack_from("<10xH8xH", data, eocd)
    if entries > MAX_ZIP_ENTRIES:
        return f"the document has more than {MAX_ZIP_ENTRIES} parts"
    if eocd + 22 + comment != len(data):
        return "data follows the end of the document's ZIP container"
    return None


def _archive_hazards(archive: zipfile.ZipFile) -> Iterator[str]:
    infos = archive.infolist()
    if len(infos) > MAX_ZIP_ENTRIES:
        yield f"the document has more than {MAX_ZIP_ENTRIES} parts"
        return
    if len({info.filename for info in infos}) != len(infos):
        yield "the document has two parts with the same name"
    total = 0
    reads = 0
    for info in infos:
        name = info.filename
        lower = name.lower()
        base = lower.rsplit("/", 1)[-1]
        extension = base.rsplit(".", 1)[-1] if "." in base else ""
        total += info.file_size
        if info.file_size > _ZIP_RATIO_FLOOR and info.file_size > MAX_ZIP_COMPRESSION_RATIO * max(
            info.compress_size, 1
        ):
            yield (
                f"the document's part {_short(name)} is compressed more than "
                f"{MAX_ZIP_COMPRESSION_RATIO}:1 (a zip bomb)"
            )
        if name.startswith(("/", "\\")) or "\\" in name or ".." in name.split("/"):
            yield f"the document has a part with an unsafe name {_short(name)}"
        if base in {"vbaproject.bin", "vbadata.xml"}:
            yield "the document contains macros (a VBA project)"
        elif "activex/" in lower:
            yield "the document contains ActiveX controls"
        elif extension in EXECUTABLE_EXTENSIONS:
            yield f"the document contains a program or script file {_short(name)}"
        elif "embeddings/" in lower:
            if extension == "bin":
                yield "the document contains an embedded OLE object (which can carry a program)"
            elif reads < _MAX_EMBEDDED_READS:
                reads += 1
                with archive.open(info) as part:
                    head = part.read(_EMBEDDED_HEAD_BYTES)
                if head.startswith(_EXECUTABLE_MAGICS):
                    yield f"the document contains an embedded program {_short(name)}"
    if total > MAX_ZIP_UNCOMPRESSED_BYTES:
        yield (
            "the document unpacks to more than "
            f"{MAX_ZIP_UNCOMPRESSED_BYTES // (1024 * 1024)} MiB (a zip bomb)"
        )
    try:
        info = archive.getinfo(_OPC_CONTENT_TYPES)
    except KeyError:
        return
    with archive.open(info) as part:
        content_types = part.read(MAX_CONTENT_TYPES_BYTES + 1)
    if len(content_types) > MAX_CONTENT_TYPES_BYTES:
        yield f"the document's {_OPC_CONTENT_TYPES} is larger than the hub inspects"
    elif any(kind in content_types.lower() for kind in _MACRO_CONTENT_TYPES):
        yield "the document is macro-enabled (its content types declare macros)"


def _short(name: str) -> str:
    text = repr(name)
    return text if len(text) <= 60 else text[:57] + "..."


_HAZARD_CHECKS: dict[str, Callable[[bytes], Iterator[str]]] = {
    PDF: _pdf_hazards,
    JPEG: _trailing("JPEG", "end-of-image marker (FFD9)", _jpeg_end),
    PNG: _trailing("PNG", "IEND chunk", _png_end),
    DOC: _ole2_hazards,
    DOCX: _zip_hazards,
    XLS: _ole2_hazards,
    XLSX: _zip_hazards,
}
