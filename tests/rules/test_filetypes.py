from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.rules.filetypes import (
    ALLOWED_CONTENT_TYPES,
    DOC,
    DOCX,
    JPEG,
    PDF,
    PNG,
    XLS,
    XLSX,
    describe,
    has_content_type,
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
