from __future__ import annotations

import io
import zipfile
import zlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.rules import filetypes
from hub.rules.filetypes import (
    ALLOWED_CONTENT_TYPES,
    DOC,
    DOCX,
    JPEG,
    MAX_INFLATED_PDF_BYTES,
    MAX_ZIP_ENTRIES,
    PDF,
    PNG,
    XLS,
    XLSX,
    describe,
    has_content_type,
    hazards,
    title_problems,
)
from tests.rules.samples import (
    EXE_BYTES,
    JPEG_BYTES,
    OLE2_BYTES,
    PDF_BYTES,
    docx_bytes,
    png_bytes,
    xlsx_bytes,
    zip_bytes,
)

# Each sample and the declared types it may travel under; every other type must fail.
SAMPLES: dict[str, tuple[bytes, set[str]]] = {
    "pdf": (PDF_BYTES, {PDF}),
    "jpeg": (JPEG_BYTES, {JPEG}),
    "png": (png_bytes(), {PNG}),
    # One container for both legacy formats: see the module's note on its limits.
    "ole2": (OLE2_BYTES, {DOC, XLS}),
    "docx": (docx_bytes(), {DOCX}),
    "xlsx": (xlsx_bytes(), {XLSX}),
    "exe": (EXE_BYTES, set()),
    "plain zip": (zip_bytes("notes.txt"), set()),
    "zip with word/ but no [Content_Types].xml": (zip_bytes("word/document.xml"), set()),
    "opc package without word/ or xl/": (zip_bytes("[Content_Types].xml", "ppt/x.xml"), set()),
    "empty": (b"", set()),
    "text": (b"hello", set()),
}


@pytest.mark.parametrize("sample", SAMPLES)
@pytest.mark.parametrize("content_type", ALLOWED_CONTENT_TYPES)
def test_bytes_match_exactly_their_own_types(sample: str, content_type: str) -> None:
    data, types = SAMPLES[sample]
    assert has_content_type(data, content_type) == (content_type in types)


def test_an_unlisted_type_never_matches() -> None:
    assert not has_content_type(b"<html></html>", "text/html")
    assert not has_content_type(PDF_BYTES, "application/PDF")


def test_a_pdf_header_must_be_at_the_start() -> None:
    # Readers accept it within the first kilobyte; that is what polyglots exploit.
    assert not has_content_type(EXE_BYTES + PDF_BYTES, PDF)


def test_a_self_extracting_executable_is_no_word_document() -> None:
    # zipfile finds the directory from the end, so the archive still "reads".
    assert not has_content_type(EXE_BYTES + docx_bytes(), DOCX)


def test_a_truncated_docx_is_refused() -> None:
    data = docx_bytes()
    assert not has_content_type(data[: len(data) // 2], DOCX)


@pytest.mark.parametrize(
    ("data", "description"),
    [
        (PDF_BYTES, "a PDF document"),
        (png_bytes(), "a PNG image"),
        (JPEG_BYTES, "a JPEG image"),
        (docx_bytes(), "a Word document (.docx)"),
        (xlsx_bytes(), "an Excel workbook (.xlsx)"),
        (OLE2_BYTES, "an Office 97-2003 document"),
        (zip_bytes("notes.txt"), "a ZIP archive"),
        (EXE_BYTES, "an executable program"),
        (b"", "empty"),
        (b"hello", "of an unrecognised type"),
    ],
)
def test_describe_names_what_the_bytes_are(data: bytes, description: str) -> None:
    assert describe(data) == description


@settings(database=None, max_examples=300)
@given(st.binary(max_size=400))
def test_damaged_zip_archives_never_raise(tail: bytes) -> None:
    # The local-header signature gets past the first check, so zipfile parses the rest.
    data = b"PK\x03\x04" + tail
    assert describe(data) in {
        "a ZIP archive",
        "a Word document (.docx)",
        "an Excel workbook (.xlsx)",
    }


@settings(database=None, max_examples=200)
@given(st.integers(min_value=1, max_value=2000))
def test_a_docx_cut_anywhere_never_raises(length: int) -> None:
    data = docx_bytes()[:length]
    assert has_content_type(data, DOCX) == (length >= len(docx_bytes()))


# -- polyglots and active content (hazards) -------------------------------------------


def zipped(entries: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
    return buffer.getvalue()


OPC = {"[Content_Types].xml": b"<Types/>", "_rels/.rels": b"<xml/>"}


def docx_with(**parts: bytes) -> bytes:
    return zipped({**OPC, "word/document.xml": b"<xml/>", **parts})


def pdf_with(body: bytes) -> bytes:
    return b"%PDF-1.7\n" + body + b"\ntrailer\n<<>>\n%%EOF\n"


def object_stream(content: bytes) -> bytes:
    packed = zlib.compress(content)
    return (
        b"5 0 obj\n<< /Type /ObjStm /N 1 /First 4 /Filter /FlateDecode /Length "
        + str(len(packed)).encode()
        + b" >>\nstream\n"
        + packed
        + b"\nendstream\nendobj"
    )


CLEAN: dict[str, tuple[bytes, str]] = {
    "pdf": (PDF_BYTES, PDF),
    "pdf with an incremental update": (PDF_BYTES + b"2 0 obj\n<<>>\nendobj\n%%EOF\r\n", PDF),
    "pdf with a harmless object stream": (pdf_with(object_stream(b"1 0 << /Type /Page >>")), PDF),
    "pdf with an open action to a page": (pdf_with(b"<< /OpenAction [3 0 R /Fit] >>"), PDF),
    "jpeg": (JPEG_BYTES, JPEG),
    "jpeg with zero padding": (JPEG_BYTES + bytes(16), JPEG),
    "png": (png_bytes(), PNG),
    "ole2": (OLE2_BYTES, DOC),
    "docx": (docx_bytes(), DOCX),
    "xlsx": (xlsx_bytes(), XLSX),
    "docx with an embedded workbook": (
        docx_with(**{"word/embeddings/Sheet1.xlsx": xlsx_bytes()}),
        DOCX,
    ),
}


@pytest.mark.parametrize("sample", CLEAN)
def test_clean_files_have_no_hazards(sample: str) -> None:
    data, content_type = CLEAN[sample]
    assert has_content_type(data, content_type)
    assert hazards(data, content_type) == []


def _jpeg_with_scan(after: bytes) -> bytes:
    # SOI, APP0, SOS (header of length 8), entropy data with a stuffed 0xFF00 and a
    # restart marker, EOI, then `after`.
    scan = b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00" + b"\x12\xff\x00\x34\xff\xd0\x56"
    return JPEG_BYTES[:-2] + scan + b"\xff\xd9" + after


ATTACKS: dict[str, tuple[bytes, str, str]] = {
    "pdf with an executable appended": (PDF_BYTES + EXE_BYTES, PDF, "bytes follow the PDF"),
    "pdf with an executable between two %%EOF": (
        PDF_BYTES + EXE_BYTES + b"\n%%EOF\n",
        PDF,
        "data that is no PDF follows",
    ),
    "pdf without %%EOF": (PDF_BYTES.replace(b"%%EOF", b""), PDF, "no %%EOF"),
    "pdf with javascript": (
        pdf_with(b"<< /S /JavaScript /JS (app.alert(1)) >>"),
        PDF,
        "JavaScript",
    ),
    "pdf with a hex-escaped javascript name": (
        pdf_with(b"<< /S /J#61vaScript /J#53 (app.alert(1)) >>"),
        PDF,
        "JavaScript",
    ),
    "pdf with an open action running javascript": (
        pdf_with(b"<< /OpenAction << /S /JavaScript /JS (x) >> >>"),
        PDF,
        "JavaScript",
    ),
    "pdf with a launch action": (pdf_with(b"<< /S /Launch /F (cmd.exe) >>"), PDF, "launch"),
    "pdf with an embedded file": (
        pdf_with(b"<< /Names << /EmbeddedFiles 2 0 R >> >> << /Type /EmbeddedFile >>"),
        PDF,
        "embedded file",
    ),
    "pdf with additional actions": (pdf_with(b"<< /AA << /O 4 0 R >> >>"), PDF, "/AA"),
    "pdf with javascript in an object stream": (
        pdf_with(object_stream(b"1 0 << /S /JavaScript /JS (x) >>")),
        PDF,
        "JavaScript",
    ),
    "pdf with an unreadable object stream": (
        pdf_with(object_stream(b"").replace(zlib.compress(b""), b"garbage!")),
        PDF,
        "cannot read",
    ),
    "jpeg with html after its end": (
        JPEG_BYTES + b"<html><script>alert(1)</script></html>",
        JPEG,
        "follow the JPEG",
    ),
    "jpeg with a scan and an executable after its end": (
        _jpeg_with_scan(EXE_BYTES),
        JPEG,
        "follow the JPEG",
    ),
    "truncated jpeg": (JPEG_BYTES[:-2], JPEG, "cut short"),
    "png with html after iend": (png_bytes() + b"<html></html>", PNG, "follow the PNG"),
    "truncated png": (png_bytes()[:-12], PNG, "cut short"),
    "doc with macros": (OLE2_BYTES + "_VBA_PROJECT".encode("utf-16-le"), DOC, "macros"),
    "xls with an embedded package": (
        OLE2_BYTES + "\x01Ole10Native".encode("utf-16-le"),
        XLS,
        "embedded package",
    ),
    "docx with a vba project": (docx_with(**{"word/vbaProject.bin": b"x"}), DOCX, "macros"),
    "docx with an embedded exe": (
        docx_with(**{"word/embeddings/setup.exe": EXE_BYTES}),
        DOCX,
        "program or script file",
    ),
    "docx with an exe hidden under another name": (
        docx_with(**{"word/embeddings/picture.png": EXE_BYTES}),
        DOCX,
        "embedded program",
    ),
    "docx with an ole object": (
        docx_with(**{"word/embeddings/oleObject1.bin": OLE2_BYTES}),
        DOCX,
        "OLE object",
    ),
    "docx with a script": (docx_with(**{"word/run.vbs": b"x"}), DOCX, "program or script"),
    "docx with activex": (docx_with(**{"word/activeX/activeX1.xml": b"x"}), DOCX, "ActiveX"),
    "docx declaring macros": (
        zipped(
            {
                **OPC,
                "[Content_Types].xml": b'<Types><Override ContentType="application/'
                b'vnd.ms-word.document.macroEnabled.main+xml"/></Types>',
                "word/document.xml": b"<xml/>",
            }
        ),
        DOCX,
        "macro-enabled",
    ),
    "xlsx declaring a vba project": (
        zipped(
            {
                **OPC,
                "[Content_Types].xml": b'<Default ContentType="application/'
                b'vnd.ms-office.vbaProject"/>',
                "xl/workbook.xml": b"<xml/>",
            }
        ),
        XLSX,
        "macro-enabled",
    ),
    "docx with a path-traversal part": (
        docx_with(**{"word/../../evil.xml": b"x"}),
        DOCX,
        "unsafe name",
    ),
    "docx with data after the archive": (docx_bytes() + b"<html></html>", DOCX, "data follows"),
    "docx with a huge [Content_Types].xml": (
        zipped({**OPC, "[Content_Types].xml": b" " * 300_000, "word/document.xml": b"<xml/>"}),
        DOCX,
        "larger than the hub inspects",
    ),
}


@pytest.mark.parametrize("attack", ATTACKS)
def test_polyglots_and_active_content_are_refused(attack: str) -> None:
    data, content_type, reason = ATTACKS[attack]
    assert has_content_type(data, content_type)  # the magic bytes alone let it pass
    found = hazards(data, content_type)
    assert any(reason in text for text in found), found


def test_a_zip_bomb_is_refused_without_unpacking_it(monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = docx_with(**{"word/media/bomb.xml": bytes(50 * 1024 * 1024)})
    assert len(bomb) < 100_000
    opened: list[str] = []
    original_open = zipfile.ZipFile.open

    def recording_open(self: zipfile.ZipFile, name: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(name if isinstance(name, str) else name.filename)
        return original_open(self, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", recording_open)
    found = hazards(bomb, DOCX)
    assert any("zip bomb" in text for text in found), found
    assert "word/media/bomb.xml" not in opened


def test_a_declared_size_beyond_the_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # Declared sizes are read from the directory; nothing is inflated to check them.
    monkeypatch.setattr(filetypes, "MAX_ZIP_UNCOMPRESSED_BYTES", 100_000)
    parts = {f"word/media/p{i}.xml": bytes(30_000) for i in range(5)}
    found = hazards(docx_with(**parts), DOCX)
    assert any("unpacks to more than" in text for text in found), found


def test_too_many_parts_are_refused_before_reading_the_directory() -> None:
    parts = {f"word/p{i}.xml": b"" for i in range(MAX_ZIP_ENTRIES + 1)}
    found = hazards(docx_with(**parts), DOCX)
    assert any("more than" in text and "parts" in text for text in found), found


def test_an_oversized_pdf_object_stream_is_refused() -> None:
    found = hazards(pdf_with(object_stream(bytes(MAX_INFLATED_PDF_BYTES + 1))), PDF)
    assert any("larger than the hub inspects" in text for text in found), found


def test_an_unknown_type_has_no_hazard_check() -> None:
    assert hazards(EXE_BYTES, "application/x-msdownload") == []


@settings(database=None, max_examples=300)
@given(st.sampled_from(ALLOWED_CONTENT_TYPES), st.binary(max_size=600))
def test_random_bytes_never_raise(content_type: str, tail: bytes) -> None:
    # Behind each type's own signature, so every parser gets past its first check.
    heads = {PDF: b"%PDF-", JPEG: b"\xff\xd8\xff", PNG: png_bytes()[:8], DOC: OLE2_BYTES[:8]}
    head = heads.get(content_type, OLE2_BYTES[:8] if content_type == XLS else b"PK\x03\x04")
    found = hazards(head + tail, content_type)
    assert all(isinstance(text, str) for text in found)


@settings(database=None, max_examples=200)
@given(st.integers(min_value=0, max_value=4000), st.binary(min_size=1, max_size=8))
def test_damaged_files_never_raise(position: int, junk: bytes) -> None:
    for data, content_type in CLEAN.values():
        at = position % (len(data) + 1)
        hazards(data[:at] + junk + data[at + len(junk) :], content_type)


# -- titles ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("title", "content_type"),
    [
        ("lab-results.pdf", PDF),
        ("Uitslag bloedonderzoek 2024.PDF", PDF),
        ("foto.jpeg", JPEG),
        ("foto.JPG", JPEG),
        ("scan.png", PNG),
        ("brief.docx", DOCX),
        ("overzicht.xlsx", XLSX),
        ("file", PDF),  # no extension: the contract does not require one
        ("report.v2", PDF),  # an extension we do not know
        ("invoice.exe.pdf", PDF),  # it is a PDF: what counts is the last extension
        ("brief.pdf", None),  # the type is unknown: extensions are not compared
        ("Résumé \u2013 één.pdf", PDF),
    ],
)
def test_ordinary_titles_pass(title: str, content_type: str | None) -> None:
    assert title_problems(title, content_type) == []


@pytest.mark.parametrize(
    ("title", "content_type", "reason"),
    [
        ("invoice.pdf.exe", PDF, "double extension"),
        ("invoice.pdf.JS", PDF, "double extension"),
        ("setup.exe", PDF, "extension .exe"),
        ("run.ps1", None, "extension .ps1"),
        ("page.html", PDF, "extension .html"),
        ("brief.docm", DOCX, "extension .docm"),
        ("invoice.exe.", PDF, "ends in a dot"),
        ("invoice.exe ", PDF, "extension .exe"),
        ("../x", PDF, "path separator"),
        ("..", PDF, "'..'"),
        ("a\\b.pdf", PDF, "path separator"),
        ("/etc/passwd", PDF, "path separator"),
        ("a\r\nSet-Cookie: x.pdf", PDF, "control characters"),
        ("a\x00.pdf", PDF, "control characters"),
        ("a\x7f.pdf", PDF, "control characters"),
        ("a\x85.pdf", PDF, "control characters"),
        ("invoice\u202efdp.exe", PDF, "text-direction"),
        ("invoice.pdf", JPEG, "does not match its content type image/jpeg"),
        ("scan.png", PDF, "expected .pdf"),
        ("brief.doc", DOCX, "does not match"),
        (" . ", PDF, "no file name"),
    ],
)
def test_dangerous_titles_are_refused(title: str, content_type: str | None, reason: str) -> None:
    problems = title_problems(title, content_type)
    assert any(reason in problem for problem in problems), problems


@settings(database=None, max_examples=300)
@given(st.text(max_size=60), st.sampled_from([*ALLOWED_CONTENT_TYPES, None]))
def test_any_title_gives_problems_not_exceptions(title: str, content_type: str | None) -> None:
    assert all(isinstance(problem, str) for problem in title_problems(title, content_type))
