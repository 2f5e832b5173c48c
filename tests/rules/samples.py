"""Sample files (real signatures, built in memory) and the contract's example request."""

from __future__ import annotations

import base64
import io
import struct
import zipfile
import zlib
from functools import cache
from pathlib import Path
from typing import Any

import yaml

CONTRACT = Path(__file__).parents[1] / "fixtures" / "spreekuur" / "notification-spreekuur.yaml"

PDF_BYTES = (
    b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<<>>\n%%EOF\n"
)
JPEG_BYTES = (
    b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    + b"\xff\xd9"  # end of image
)
# A Windows executable: the DOS "MZ" stub that every .exe starts with.
EXE_BYTES = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff" + bytes(46) + b"PE\x00\x00"
# An OLE2 compound file header (.doc and .xls): the signature, then the 512-byte header.
OLE2_BYTES = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504)


def png_bytes() -> bytes:
    """A real 1x1 greyscale PNG."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00\x00"))
        + chunk(b"IEND", b"")
    )


def zip_bytes(*names: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in names:
            archive.writestr(name, "<xml/>")
    return buffer.getvalue()


def docx_bytes() -> bytes:
    return zip_bytes("[Content_Types].xml", "_rels/.rels", "word/document.xml")


def xlsx_bytes() -> bytes:
    return zip_bytes("[Content_Types].xml", "_rels/.rels", "xl/workbook.xml")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def wrapped(text: str, width: int, separator: str) -> str:
    """`text` in lines of `width` characters (as MIME wraps base64 at 76)."""
    return separator.join(text[i : i + width] for i in range(0, len(text), width))


def attachment(data: bytes, content_type: str, title: str = "file") -> dict[str, Any]:
    return {"contentAttachment": {"data": b64(data), "contentType": content_type, "title": title}}


@cache  # parsed once per run; example_communication() copies what it takes
def contract() -> dict[str, Any]:
    with CONTRACT.open(encoding="utf-8") as file:
        loaded: dict[str, Any] = yaml.safe_load(file)
    return loaded


def example_communication() -> dict[str, Any]:
    """A notification made of the OpenAPI schema's example values, plus one PDF attachment.

    The schema gives no example for the attachment's `data`, so it gets a small PDF.
    """
    schemas = contract()["components"]["schemas"]
    communication = schemas["Communication"]["properties"]
    coding = communication["category"]["items"]["properties"]["coding"]["items"]["properties"]
    payload = communication["payload"]["items"]["properties"]
    recipient = communication["recipient"]["items"]["properties"]
    file = schemas["Attachment"]["properties"]
    patient = schemas["Patient"]["properties"]
    identifier = patient["identifier"]["items"]["properties"]
    telecom = patient["telecom"]["items"]["properties"]
    return {
        "resourceType": communication["resourceType"]["example"],
        "status": communication["status"]["example"],
        "category": [
            {"coding": [{"system": coding["system"]["example"], "code": coding["code"]["example"]}]}
        ],
        "topic": {"text": communication["topic"]["properties"]["text"]["example"]},
        "payload": [
            {"contentString": payload["contentString"]["example"]},
            {
                "contentAttachment": {
                    "data": b64(PDF_BYTES),
                    "contentType": file["contentType"]["example"],
                    "title": file["title"]["example"],
                }
            },
        ],
        "recipient": [{"reference": recipient["reference"]["example"]}],
        "contained": [
            {
                "resourceType": patient["resourceType"]["example"],
                "id": patient["id"]["example"],
                "identifier": [
                    {
                        "system": identifier["system"]["example"],
                        # The YAML leaves 123456782 unquoted, so it loads as an int;
                        # FHIR Identifier.value is a string.
                        "value": str(identifier["value"]["example"]),
                    }
                ],
                "telecom": [
                    {"system": telecom["system"]["example"], "value": telecom["value"]["example"]}
                ],
            }
        ],
    }
