from __future__ import annotations

import hashlib
import io
import zipfile
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.fhir.extract import extract
from hub.fhir.model import validate
from hub.fhir.outcome import FhirError, Issue
from hub.rules.bsn import BSN_SYSTEM
from hub.rules.notification import (
    contained_patient,
    decode_base64,
    patient_bsn,
    patient_email,
    validate_communication,
)
from hub.syntax import is_email_address
from tests.rules.samples import (
    CONTRACT,
    EXE_BYTES,
    JPEG_BYTES,
    OLE2_BYTES,
    PDF_BYTES,
    attachment,
    b64,
    docx_bytes,
    example_communication,
    png_bytes,
    wrapped,
    xlsx_bytes,
    zip_bytes,
)

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
PATIENT = "Communication.contained[0]"
FIRST_FILE = "Communication.payload[1].contentAttachment"


@pytest.fixture
def resource() -> dict[str, Any]:
    return example_communication()


def located(issues: list[Issue]) -> set[tuple[str, tuple[str, ...]]]:
    return {(issue.code, issue.expression) for issue in issues}


def only_issue(resource: dict[str, Any]) -> Issue:
    issues = validate_communication(resource)
    assert len(issues) == 1, issues
    return issues[0]


def set_attachments(resource: dict[str, Any], *entries: dict[str, Any]) -> None:
    resource["payload"] = [resource["payload"][0], *entries]


# -- the contract's own example --------------------------------------------------------


def test_the_fixture_is_the_unmodified_contract() -> None:
    digest = hashlib.sha256(CONTRACT.read_bytes()).hexdigest()
    assert digest == "45f26019279d7b40e8d71e00672dc849fa5caf0febc0a1ef59f2c0037dbc4547"


def test_the_contracts_example_request_is_accepted(resource: dict[str, Any]) -> None:
    assert resource["category"][0]["coding"][0]["code"] == "melding"
    assert resource["recipient"][0]["reference"] == "#9876543210"
    assert validate_communication(resource) == []


def test_helpers_read_the_recipient_from_the_example(resource: dict[str, Any]) -> None:
    patient = contained_patient(resource)
    assert patient is not None
    assert patient["id"] == "9876543210"
    assert patient_bsn(resource) == "123456782"
    assert patient_email(resource) == "jan.janssen@example.com"


# -- status, category, topic ----------------------------------------------------------


def test_status_must_be_completed(resource: dict[str, Any]) -> None:
    resource["status"] = "in-progress"
    assert located(validate_communication(resource)) == {("value", ("Communication.status",))}
    del resource["status"]
    assert located(validate_communication(resource)) == {("required", ("Communication.status",))}


@pytest.mark.parametrize("category", [None, []])
def test_category_is_required(resource: dict[str, Any], category: Any) -> None:
    resource["category"] = category
    issue = only_issue(resource)
    assert (issue.code, issue.expression) == ("required", ("Communication.category",))


def test_category_must_have_code_melding(resource: dict[str, Any]) -> None:
    resource["category"] = [
        {"coding": [{"system": "nl.spreekuur.communication-category", "code": "chat"}]}
    ]
    issue = only_issue(resource)
    assert (issue.code, issue.expression) == ("value", ("Communication.category",))
    assert "melding" in issue.diagnostics


def test_melding_may_be_any_coding_of_any_category(resource: dict[str, Any]) -> None:
    resource["category"] = [
        {"text": "no coding"},
        {"coding": [{"code": "chat"}, {"system": "other", "code": "melding"}]},
    ]
    assert validate_communication(resource) == []


@pytest.mark.parametrize("text", ["x" * 500, "é" * 500, "😀" * 500, "x"])
def test_topic_up_to_500_characters_is_accepted(resource: dict[str, Any], text: str) -> None:
    resource["topic"]["text"] = text
    assert validate_communication(resource) == []


@pytest.mark.parametrize("text", ["x" * 501, "é" * 501, "😀" * 501])
def test_topic_over_500_characters_is_too_long(resource: dict[str, Any], text: str) -> None:
    resource["topic"]["text"] = text
    issue = only_issue(resource)
    assert (issue.code, issue.expression) == ("too-long", ("Communication.topic.text",))
    assert "501 characters" in issue.diagnostics


@pytest.mark.parametrize(
    ("topic", "code"),
    [(None, "required"), ({}, "required"), ({"text": ""}, "value"), ({"text": 7}, "invalid")],
)
def test_topic_text_is_required(resource: dict[str, Any], topic: Any, code: str) -> None:
    resource["topic"] = topic
    issue = only_issue(resource)
    assert (issue.code, issue.expression) == (code, ("Communication.topic.text",))


# -- the message text -----------------------------------------------------------------


@pytest.mark.parametrize("text", ["x", "x" * 10_000, "é" * 10_000, "😀" * 10_000])
def test_message_of_1_to_10000_characters_is_accepted(resource: dict[str, Any], text: str) -> None:
    # "😀" * 10_000 is 40,000 bytes of UTF-8 (and 20,000 UTF-16 units): characters count.
    resource["payload"][0]["contentString"] = text
    assert validate_communication(resource) == []


@pytest.mark.parametrize(
    ("text", "code"), [("", "value"), ("x" * 10_001, "too-long"), ("😀" * 10_001, "too-long")]
)
def test_message_empty_or_over_10000_characters_is_refused(
    resource: dict[str, Any], text: str, code: str
) -> None:
    resource["payload"][0]["contentString"] = text
    issue = only_issue(resource)
    assert (issue.code, issue.expression) == (code, ("Communication.payload[0].contentString",))


def test_a_message_text_is_required(resource: dict[str, Any]) -> None:
    del resource["payload"][0]
    issue = only_issue(resource)
    assert (issue.code, issue.expression) == ("required", ("Communication.payload",))


@pytest.mark.parametrize("payload", [None, []])
def test_payload_is_required(resource: dict[str, Any], payload: Any) -> None:
    resource["payload"] = payload
    assert located(validate_communication(resource)) == {("required", ("Communication.payload",))}


def test_only_one_message_text(resource: dict[str, Any]) -> None:
    resource["payload"].append({"contentString": "second"})
    issue = only_issue(resource)
    assert (issue.code, issue.expression) == ("invalid", ("Communication.payload",))


@pytest.mark.parametrize(
    ("entry", "expression"),
    [
        ({}, "Communication.payload[2]"),
        (
            {"contentReference": {"reference": "Binary/1"}},
            "Communication.payload[2].contentReference",
        ),
    ],
)
def test_a_payload_entry_needs_string_or_attachment(
    resource: dict[str, Any], entry: dict[str, Any], expression: str
) -> None:
    resource["payload"].append(entry)
    issue = only_issue(resource)
    assert issue.expression == (expression,)


# -- attachments ----------------------------------------------------------------------


def test_five_attachments_are_accepted(resource: dict[str, Any]) -> None:
    set_attachments(resource, *[attachment(PDF_BYTES, "application/pdf")] * 5)
    assert validate_communication(resource) == []


def test_six_attachments_are_refused(resource: dict[str, Any]) -> None:
    set_attachments(resource, *[attachment(PDF_BYTES, "application/pdf")] * 6)
    issue = only_issue(resource)
    assert (issue.code, issue.expression) == ("invalid", ("Communication.payload",))
    assert "6 attachments" in issue.diagnostics


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        (PDF_BYTES, "application/pdf"),
        (JPEG_BYTES, "image/jpeg"),
        (png_bytes(), "image/png"),
        (OLE2_BYTES, "application/msword"),
        (OLE2_BYTES, "application/vnd.ms-excel"),
        (docx_bytes(), DOCX),
        (xlsx_bytes(), XLSX),
    ],
)
def test_every_allowed_type_is_accepted(
    resource: dict[str, Any], data: bytes, content_type: str
) -> None:
    set_attachments(resource, attachment(data, content_type))
    assert validate_communication(resource) == []


@pytest.mark.parametrize("field", ["data", "contentType", "title"])
@pytest.mark.parametrize(("value", "code"), [(None, "required"), ("", "value"), (3, "invalid")])
def test_an_attachment_needs_data_type_and_title(
    resource: dict[str, Any], field: str, value: Any, code: str
) -> None:
    file = resource["payload"][1]["contentAttachment"]
    if value is None:
        del file[field]
    else:
        file[field] = value
    issue = only_issue(resource)
    assert (issue.code, issue.expression) == (code, (f"{FIRST_FILE}.{field}",))


@pytest.mark.parametrize("content_type", ["text/html", "application/PDF", "application/pdf; x=y"])
def test_only_the_contracts_content_types(resource: dict[str, Any], content_type: str) -> None:
    resource["payload"][1]["contentAttachment"]["contentType"] = content_type
    issue = only_issue(resource)
    assert (issue.code, issue.expression) == ("value", (f"{FIRST_FILE}.contentType",))
    assert "image/png" in issue.diagnostics


@pytest.mark.parametrize(
    "data",
    [
        "JVBERi0x@@==",  # outside the alphabet
        "JVB\nERi0x",  # a line break inside a group of four
        "JVBERi0x\v",  # whitespace outside FHIR's (space, tab, CR, LF)
        "JVBE\u00a0Ri0x",  # a no-break space
        " \r\n",  # only whitespace
        "JVBERi0",  # padding missing
        "JVBERi0x=",  # padding where none belongs
        "QR==",  # non-zero padding bits: "QQ==" is the one encoding of b"A"
        "_-8=",  # the URL-safe alphabet
        "JVBERi0xLjcK\u00e9",  # not ASCII
    ],
)
def test_data_must_be_strict_base64(resource: dict[str, Any], data: str) -> None:
    resource["payload"][1]["contentAttachment"]["data"] = data
    issue = only_issue(resource)
    assert (issue.code, issue.expression) == ("invalid", (f"{FIRST_FILE}.data",))
    assert "base64" in issue.diagnostics


@pytest.mark.parametrize(
    "data",
    [
        b64(PDF_BYTES)[:8] + "\n" + b64(PDF_BYTES)[8:],
        wrapped(b64(PDF_BYTES * 4), 76, "\r\n") + "\r\n",
        " " + b64(PDF_BYTES) + "\n",
        wrapped(b64(PDF_BYTES), 4, " \t"),
    ],
    ids=["a line break", "MIME lines of 76", "around", "between every group"],
)
def test_data_may_have_whitespace_between_groups_of_four(
    resource: dict[str, Any], data: str
) -> None:
    # FHIR R4 base64Binary is (\s*([0-9a-zA-Z\+/=]){4}\s*)+ (its \s: space, tab, CR, LF).
    resource["payload"][1]["contentAttachment"]["data"] = data
    assert validate_communication(resource) == []
    decoded = decode_base64(data)
    assert decoded is not None and decoded.startswith(PDF_BYTES)


@pytest.mark.parametrize(
    ("data", "content_type", "seen"),
    [
        (EXE_BYTES, "application/pdf", "an executable program"),
        (png_bytes(), "image/jpeg", "a PNG image"),
        (zip_bytes("notes.txt"), DOCX, "a ZIP archive"),
        (xlsx_bytes(), DOCX, "an Excel workbook (.xlsx)"),
        (EXE_BYTES + docx_bytes(), DOCX, "an executable program"),
        (PDF_BYTES, "application/msword", "a PDF document"),
    ],
)
def test_data_must_be_what_its_type_says(
    resource: dict[str, Any], data: bytes, content_type: str, seen: str
) -> None:
    set_attachments(resource, attachment(data, content_type))
    issue = only_issue(resource)
    assert (issue.code, issue.expression) == ("invalid", (f"{FIRST_FILE}.data",))
    assert issue.diagnostics.endswith(f"it is {seen}")


def test_data_is_not_sniffed_against_a_refused_type(resource: dict[str, Any]) -> None:
    set_attachments(resource, attachment(EXE_BYTES, "application/x-msdownload"))
    assert located(validate_communication(resource)) == {("value", (f"{FIRST_FILE}.contentType",))}


def _docx_with(name: str, content: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for part in ("[Content_Types].xml", "_rels/.rels", "word/document.xml"):
            archive.writestr(part, "<xml/>")
        archive.writestr(name, content)
    return buffer.getvalue()


def pdf_with(dictionary: bytes) -> bytes:
    return b"%PDF-1.7\n1 0 obj\n<< " + dictionary + b" >>\nendobj\ntrailer\n<<>>\n%%EOF\n"


@pytest.mark.parametrize(
    ("data", "content_type", "reason"),
    [
        (PDF_BYTES + EXE_BYTES, "application/pdf", "bytes follow the PDF's last %%EOF"),
        (pdf_with(b"/S /JavaScript /JS (app.alert(1))"), "application/pdf", "JavaScript"),
        (pdf_with(b"/S /J#61vaScript"), "application/pdf", "JavaScript"),
        (pdf_with(b"/S /Launch /F (cmd.exe)"), "application/pdf", "launch action"),
        (pdf_with(b"/Type /EmbeddedFile"), "application/pdf", "embedded file"),
        (pdf_with(b"/AA << /O 2 0 R >>"), "application/pdf", "automatic actions"),
        (JPEG_BYTES + b"<html><script>alert(1)</script>", "image/jpeg", "follow the JPEG"),
        (png_bytes() + b"<html></html>", "image/png", "follow the PNG"),
        (OLE2_BYTES + "_VBA_PROJECT".encode("utf-16-le"), "application/msword", "macros"),
        (_docx_with("word/vbaProject.bin", b"x"), DOCX, "macros"),
        (_docx_with("word/embeddings/setup.exe", EXE_BYTES), DOCX, "program or script"),
        (_docx_with("word/media/bomb.xml", bytes(10 * 1024 * 1024)), DOCX, "zip bomb"),
    ],
    ids=[
        "pdf+exe", "pdf javascript", "pdf escaped name", "pdf launch", "pdf embedded file",
        "pdf additional actions", "jpeg+html", "png+html", "doc macros", "docx macros",
        "docx embedded exe", "docx zip bomb",
    ],
)  # fmt: skip
def test_polyglots_and_active_content_are_refused(
    resource: dict[str, Any], data: bytes, content_type: str, reason: str
) -> None:
    title = {"image/jpeg": "x.jpg", "image/png": "x.png", DOCX: "x.docx"}.get(content_type, "x")
    set_attachments(resource, attachment(data, content_type, title))
    issue = only_issue(resource)
    assert (issue.code, issue.expression) == ("invalid", (f"{FIRST_FILE}.data",))
    assert issue.diagnostics.startswith("Attachment data is refused: ")
    assert reason in issue.diagnostics


@pytest.mark.parametrize(
    ("title", "reason"),
    [
        ("invoice.pdf.exe", "double extension"),
        ("invoice.exe", "extension .exe"),
        ("../x.pdf", "path separator"),
        ("..", "'..'"),
        ("dir\\x.pdf", "path separator"),
        ("x.pdf\r\nX-Injected: 1", "control characters"),
        ("x\x00.pdf", "control characters"),
        ("invoice\u202efdp.exe", "text-direction"),
        ("invoice.exe.", "ends in a dot"),
        ("scan.jpg", "does not match its content type application/pdf"),
    ],
)
def test_unsafe_titles_are_refused(resource: dict[str, Any], title: str, reason: str) -> None:
    resource["payload"][1]["contentAttachment"]["title"] = title
    issues = validate_communication(resource)
    assert {issue.expression for issue in issues} == {(f"{FIRST_FILE}.title",)}
    assert all(issue.code == "invalid" for issue in issues)
    assert any(reason in issue.diagnostics for issue in issues), issues


def test_a_title_is_compared_only_with_what_the_bytes_are(resource: dict[str, Any]) -> None:
    # A PNG declared as JPEG is refused for its data; its .pdf title is not judged against
    # a type the bytes do not have.
    set_attachments(resource, attachment(png_bytes(), "image/jpeg", "lab-results.pdf"))
    assert located(validate_communication(resource)) == {("invalid", (f"{FIRST_FILE}.data",))}


def test_every_unsafe_attachment_is_named(resource: dict[str, Any]) -> None:
    set_attachments(
        resource,
        attachment(PDF_BYTES, "application/pdf", "ok.pdf"),
        attachment(PDF_BYTES + EXE_BYTES, "application/pdf", "invoice.pdf.exe"),
        attachment(JPEG_BYTES, "image/jpeg", "foto.jpg"),
        attachment(JPEG_BYTES + b"<html>", "image/jpeg", "foto.jpg"),
    )
    assert located(validate_communication(resource)) == {
        ("invalid", ("Communication.payload[2].contentAttachment.data",)),
        ("invalid", ("Communication.payload[2].contentAttachment.title",)),
        ("invalid", ("Communication.payload[4].contentAttachment.data",)),
    }


def test_title_diagnostics_never_echo_the_title(resource: dict[str, Any]) -> None:
    secret = "Uitslag HIV-test Jan Jansen"
    resource["payload"][1]["contentAttachment"]["title"] = f"{secret}.pdf.exe"
    issues = validate_communication(resource)
    assert issues and not any(secret in issue.diagnostics for issue in issues)


# -- recipient and patient ------------------------------------------------------------


@pytest.mark.parametrize("recipient", [None, []])
def test_recipient_is_required(resource: dict[str, Any], recipient: Any) -> None:
    resource["recipient"] = recipient
    issue = only_issue(resource)
    assert (issue.code, issue.expression) == ("required", ("Communication.recipient",))


@pytest.mark.parametrize(
    "reference", ["Patient/9876543210", "#", "#unknown", "9876543210", None, "#practitioner"]
)
def test_recipient_must_reference_the_contained_patient(
    resource: dict[str, Any], reference: str | None
) -> None:
    resource["contained"].append({"resourceType": "Practitioner", "id": "practitioner"})
    resource["recipient"] = [{"reference": reference}]
    issue = only_issue(resource)
    assert (issue.code, issue.expression) == ("invalid", ("Communication.recipient[0].reference",))
    assert contained_patient(resource) is None


def test_recipients_may_repeat_the_patient(resource: dict[str, Any]) -> None:
    # Every item "references the contained Patient resource that should receive the
    # notification" (the OpenAPI schema): a second one naming the same Patient is fine.
    resource["recipient"].append(dict(resource["recipient"][0]))
    assert validate_communication(resource) == []
    assert patient_bsn(resource) == "123456782"


def test_recipients_name_one_patient(resource: dict[str, Any]) -> None:
    other = {
        "resourceType": "Patient",
        "id": "other",
        "identifier": [{"system": BSN_SYSTEM, "value": "111222333"}],
    }
    resource["contained"].append(other)
    resource["recipient"].append({"reference": "#other"})
    issue = only_issue(resource)
    assert (issue.code, issue.expression) == ("invalid", ("Communication.recipient",))
    assert "one patient" in issue.diagnostics


def test_a_recipient_that_is_no_object(resource: dict[str, Any]) -> None:
    resource["recipient"] = ["#9876543210"]
    issue = only_issue(resource)
    assert (issue.code, issue.expression) == ("invalid", ("Communication.recipient[0]",))


def test_a_contained_patient_is_required(resource: dict[str, Any]) -> None:
    del resource["contained"]
    assert located(validate_communication(resource)) == {
        ("invalid", ("Communication.recipient[0].reference",)),
        ("required", ("Communication.contained",)),
    }


def test_the_patient_needs_a_bsn(resource: dict[str, Any]) -> None:
    resource["contained"][0]["identifier"] = [{"system": "urn:other", "value": "123456782"}]
    issue = only_issue(resource)
    assert (issue.code, issue.expression) == ("required", (f"{PATIENT}.identifier",))
    assert patient_bsn(resource) is None


@pytest.mark.parametrize(
    ("value", "code"),
    [("123456789", "value"), ("12345678", "value"), (123456782, "invalid"), (None, "required")],
)
def test_the_bsn_must_pass_the_eleven_test(resource: dict[str, Any], value: Any, code: str) -> None:
    resource["contained"][0]["identifier"][0]["value"] = value
    issue = only_issue(resource)
    assert (issue.code, issue.expression) == (code, (f"{PATIENT}.identifier[0].value",))
    assert patient_bsn(resource) is None


def test_an_eight_digit_bsn_gets_a_hint(resource: dict[str, Any]) -> None:
    resource["contained"][0]["identifier"][0]["value"] = "12345672"  # 012345672 is valid
    assert "leading zero" in only_issue(resource).diagnostics


def test_the_patient_has_one_bsn(resource: dict[str, Any]) -> None:
    identifiers = resource["contained"][0]["identifier"]
    identifiers.append({**identifiers[0], "value": "111222333"})
    assert located(validate_communication(resource)) == {("invalid", (f"{PATIENT}.identifier",))}


@pytest.mark.parametrize(
    "address",
    [
        "not-an-email",
        "jan@localhost",
        "jan@example.com\r\nBcc: x@example.com",
        "jan @example.com",
        "jan..janssen@example.com",
        "jan@-example.com",
        "jän@example.com",
        42,
        None,
    ],
)
def test_an_email_telecom_holds_an_email_address(resource: dict[str, Any], address: Any) -> None:
    resource["contained"][0]["telecom"] = [
        {"system": "phone", "value": "+31 20 123 4567"},
        {"system": "email", "value": address},
    ]
    issue = only_issue(resource)
    assert (issue.code, issue.expression) == ("value", (f"{PATIENT}.telecom[1].value",))
    assert patient_email(resource) is None


def test_patient_email_skips_old_addresses(resource: dict[str, Any]) -> None:
    resource["contained"][0]["telecom"] = [
        {"system": "email", "value": "old@example.com", "use": "old"},
        {"system": "email", "value": "new@example.com", "use": "home"},
    ]
    assert patient_email(resource) == "new@example.com"


def test_no_email_at_all_is_fine(resource: dict[str, Any]) -> None:
    del resource["contained"][0]["telecom"]
    assert validate_communication(resource) == []
    assert patient_email(resource) is None


# -- one patient only: unique contained ids, each recipient one contained Patient -----

OTHER_BSN = "111222333"


def patient_sharing(resource: dict[str, Any], resource_id: str, bsn: str = OTHER_BSN) -> None:
    """A second contained Patient with its own valid BSN, under `resource_id`."""
    resource["contained"].append(
        {
            "resourceType": "Patient",
            "id": resource_id,
            "identifier": [{"system": BSN_SYSTEM, "value": bsn}],
        }
    )


def indexed_bsns(resource: dict[str, Any]) -> set[str | None]:
    """The BSNs the search index files `resource` under (`patient-identifier`)."""
    return {row.code for row in extract(resource).tokens if row.param == "patient-identifier"}


@pytest.mark.parametrize("other_id", ["practitioner", "9876543211", "p9876543210", "P"])
def test_contained_resources_with_ids_of_their_own_are_accepted(
    resource: dict[str, Any], other_id: str
) -> None:
    resource["contained"].append({"resourceType": "Practitioner", "id": other_id})
    assert validate_communication(resource) == []
    assert patient_bsn(resource) == "123456782"


def test_two_patients_sharing_the_recipients_id_are_refused(resource: dict[str, Any]) -> None:
    # The attack: the recipient `#p` resolves to both Patients, and so does the search
    # index, which would file the notification under both BSNs.
    resource["contained"][0]["id"] = "p"
    resource["recipient"] = [{"reference": "#p"}]
    patient_sharing(resource, "p")
    assert indexed_bsns(resource) == {"123456782", OTHER_BSN}  # hence: refuse it

    issues = validate_communication(resource)
    assert located(issues) == {
        ("invalid", ("Communication.contained[1].id",)),
        ("invalid", ("Communication.recipient[0].reference",)),
    }
    said = {issue.expression[0]: issue.diagnostics for issue in issues}
    assert "Communication.contained[0]" in said["Communication.contained[1].id"]
    assert "exactly one" in said["Communication.recipient[0].reference"]
    assert contained_patient(resource) is None
    assert patient_bsn(resource) is None
    assert patient_email(resource) is None
    validate(resource)  # the R4 model alone lets it pass
    with pytest.raises(FhirError) as raised:
        validate(resource, rules=validate_communication)
    assert raised.value.status == 400


def test_every_repeated_contained_id_is_named(resource: dict[str, Any]) -> None:
    patient_id = resource["contained"][0]["id"]
    patient_sharing(resource, patient_id)
    resource["contained"].append({"resourceType": "Practitioner", "id": "x"})
    resource["contained"].append({"resourceType": "Organization", "id": "x"})
    patient_sharing(resource, patient_id, "123456782")  # even the same patient again
    assert located(validate_communication(resource)) == {
        ("invalid", ("Communication.contained[1].id",)),
        ("invalid", ("Communication.contained[3].id",)),
        ("invalid", ("Communication.contained[4].id",)),
        ("invalid", ("Communication.recipient[0].reference",)),
    }


def test_a_repeated_id_the_recipient_does_not_use_is_refused_too(
    resource: dict[str, Any],
) -> None:
    resource["contained"].append({"resourceType": "Practitioner", "id": "x"})
    resource["contained"].append({"resourceType": "Practitioner", "id": "x"})
    issue = only_issue(resource)
    assert (issue.code, issue.expression) == ("invalid", ("Communication.contained[2].id",))


def test_a_patient_sharing_its_id_with_another_resource_is_refused(
    resource: dict[str, Any],
) -> None:
    patient_id = resource["contained"][0]["id"]
    resource["contained"].insert(0, {"resourceType": "Practitioner", "id": patient_id})
    assert located(validate_communication(resource)) == {
        ("invalid", ("Communication.contained[1].id",)),
        ("invalid", ("Communication.recipient[0].reference",)),
    }
    assert patient_bsn(resource) is None


@pytest.mark.parametrize(
    ("contained", "said"),
    [
        ([{"resourceType": "Practitioner", "id": "elsewhere"}], "does not resolve"),
        ([{"resourceType": "Practitioner", "id": "p"}], "'Practitioner', not a Patient"),
        ([{"resourceType": "RelatedPerson", "id": "p"}], "'RelatedPerson', not a Patient"),
    ],
)
def test_a_recipient_resolves_to_one_contained_patient(
    resource: dict[str, Any], contained: list[dict[str, Any]], said: str
) -> None:
    resource["contained"] += contained
    resource["recipient"] = [{"reference": "#p"}]
    issue = only_issue(resource)
    assert (issue.code, issue.expression) == ("invalid", ("Communication.recipient[0].reference",))
    assert said in issue.diagnostics
    assert contained_patient(resource) is None


def test_a_later_recipient_is_held_to_the_same_rule(resource: dict[str, Any]) -> None:
    resource["contained"].append({"resourceType": "Practitioner", "id": "p"})
    resource["recipient"].append({"reference": "#p"})
    assert located(validate_communication(resource)) == {
        ("invalid", ("Communication.recipient[1].reference",)),
        ("invalid", ("Communication.recipient",)),  # and not the same patient
    }


def test_diagnostics_about_ids_never_echo_them(resource: dict[str, Any]) -> None:
    # The example's Patient id looks like a patient number: it is not repeated.
    patient_id = resource["contained"][0]["id"]
    patient_sharing(resource, patient_id)
    issues = validate_communication(resource)
    assert issues
    assert not any(patient_id in issue.diagnostics for issue in issues)


# -- everything at once ---------------------------------------------------------------


def test_every_violation_is_reported_together(resource: dict[str, Any]) -> None:
    resource["status"] = "preparation"
    resource["category"] = [{"coding": [{"code": "chat"}]}]
    resource["topic"]["text"] = "t" * 501
    resource["payload"][0]["contentString"] = ""
    set_attachments(
        resource,
        *[attachment(PDF_BYTES, "application/pdf")] * 4,
        attachment(EXE_BYTES, "application/pdf"),
        {"contentAttachment": {"data": "@@", "contentType": "text/html"}},
    )
    resource["contained"][0]["identifier"][0]["value"] = "123456789"
    resource["contained"][0]["telecom"][0]["value"] = "jan"
    assert located(validate_communication(resource)) == {
        ("value", ("Communication.status",)),
        ("value", ("Communication.category",)),
        ("too-long", ("Communication.topic.text",)),
        ("value", ("Communication.payload[0].contentString",)),
        ("invalid", ("Communication.payload",)),
        ("invalid", ("Communication.payload[5].contentAttachment.data",)),
        ("required", ("Communication.payload[6].contentAttachment.title",)),
        ("value", ("Communication.payload[6].contentAttachment.contentType",)),
        ("invalid", ("Communication.payload[6].contentAttachment.data",)),
        ("value", (f"{PATIENT}.identifier[0].value",)),
        ("value", (f"{PATIENT}.telecom[0].value",)),
    }


def test_diagnostics_never_echo_the_patients_data(resource: dict[str, Any]) -> None:
    secrets = ["Uitslag HIV-test", "Uw uitslag is positief", "123456789", "jan@janssen"]
    resource["topic"]["text"] = secrets[0] * 100
    resource["payload"][0]["contentString"] = secrets[1] * 1000
    resource["contained"][0]["identifier"][0]["value"] = secrets[2]
    resource["contained"][0]["telecom"][0]["value"] = secrets[3]
    issues = validate_communication(resource)
    assert len(issues) == 4
    text = " ".join(issue.diagnostics for issue in issues)
    assert not any(secret in text for secret in secrets)


# -- robustness -----------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
PATHS = [
    ("status",), ("category",), ("category", 0), ("category", 0, "coding"),
    ("category", 0, "coding", 0), ("category", 0, "coding", 0, "code"), ("topic",),
    ("topic", "text"), ("payload",), ("payload", 0), ("payload", 0, "contentString"),
    ("payload", 1), ("payload", 1, "contentAttachment"),
    ("payload", 1, "contentAttachment", "data"),
    ("payload", 1, "contentAttachment", "contentType"),
    ("payload", 1, "contentAttachment", "title"), ("recipient",), ("recipient", 0),
    ("recipient", 0, "reference"), ("contained",), ("contained", 0),
    ("contained", 0, "resourceType"), ("contained", 0, "id"), ("contained", 0, "identifier"),
    ("contained", 0, "identifier", 0), ("contained", 0, "identifier", 0, "system"),
    ("contained", 0, "identifier", 0, "value"), ("contained", 0, "telecom"),
    ("contained", 0, "telecom", 0), ("contained", 0, "telecom", 0, "value"),
]  # fmt: skip


def with_value(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    """The contract's example with `value` at `path`."""
    resource = example_communication()
    parent: Any = resource
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    return resource


@settings(database=None, max_examples=400)
@given(st.sampled_from(PATHS), json_values)
def test_any_json_in_any_place_gives_issues_not_exceptions(
    path: tuple[Any, ...], value: Any
) -> None:
    resource = with_value(path, value)
    issues = validate_communication(resource)
    assert all(issue.expression and issue.diagnostics for issue in issues)
    contained_patient(resource)
    patient_bsn(resource)
    patient_email(resource)


@settings(database=None)
@given(st.dictionaries(st.text(max_size=12), json_values, max_size=6))
def test_any_json_object_gives_issues_not_exceptions(resource: dict[str, Any]) -> None:
    assert validate_communication(resource)  # no status, at least


@settings(database=None, max_examples=400)
@given(st.sampled_from(PATHS), json_values)
def test_with_the_model_any_json_in_any_place_gives_one_400(
    path: tuple[Any, ...], value: Any
) -> None:
    """The hub checks the contract together with the R4 model: still only a 400 escapes."""
    refusal = None
    try:
        validate(with_value(path, value), rules=validate_communication)
    except FhirError as error:
        refusal = error
    if refusal is not None:
        assert refusal.status == 400
        assert all(issue.expression and issue.diagnostics for issue in refusal.issues)


@pytest.mark.parametrize(
    ("path", "value", "where"),
    [
        (("status",), 7, ["Communication.status"]),
        (("category",), "melding", ["Communication.category"]),
        (("topic",), "Lab results", ["Communication.topic"]),
        (("topic", "text"), ["Lab results"], ["Communication.topic.text"]),
        (("payload",), {"contentString": "Hello"}, ["Communication.payload"]),
        (("payload",), "Hello", ["Communication.payload"]),
        (("payload",), [], ["Communication.payload"]),
        (("payload",), ["Hello"], ["Communication.payload", "Communication.payload[0]"]),
        (("payload", 0, "contentString"), "", ["Communication.payload[0].contentString"]),
        (("payload", 0, "contentString"), 42, ["Communication.payload[0].contentString"]),
        (("payload", 1, "contentAttachment"), "JVBERi0x", [FIRST_FILE]),
        (("payload", 1, "contentAttachment", "data"), 12, [f"{FIRST_FILE}.data"]),
        (("recipient",), {"reference": "#9876543210"}, ["Communication.recipient"]),
        (("recipient", 0), "#9876543210", ["Communication.recipient[0]"]),
        (
            ("contained",),
            {"resourceType": "Patient", "id": "9876543210"},
            ["Communication.contained", "Communication.recipient[0].reference"],
        ),
        (("contained", 0, "identifier"), {"system": "x"}, [f"{PATIENT}.identifier"]),
        (("contained", 0, "identifier", 0, "value"), 123456782, [f"{PATIENT}.identifier[0].value"]),
        (("contained", 0, "telecom", 0, "value"), 42, [f"{PATIENT}.telecom[0].value"]),
    ],
)
def test_a_malformed_shape_is_reported_once_with_the_model(
    path: tuple[Any, ...], value: Any, where: list[str]
) -> None:
    """Where the model and the contract refuse an element alike, the contract's issue is kept."""
    resource = with_value(path, value)
    with pytest.raises(FhirError) as raised:
        validate(resource, rules=validate_communication)
    issues = raised.value.issues
    assert sorted(expression for issue in issues for expression in issue.expression) == where
    assert all(issue.code != "structure" for issue in issues)  # the model's code


@settings(database=None)
@given(st.binary(min_size=1, max_size=64), st.sampled_from(["", "\n", "\r\n", " ", "\t"]))
def test_base64_round_trips_exactly(data: bytes, separator: str) -> None:
    assert decode_base64(b64(data)) == data
    assert decode_base64(wrapped(b64(data), 4, separator) + separator) == data


def test_empty_base64_is_no_base64() -> None:
    # FHIR base64Binary is one or more groups of four (and FHIR JSON has no empty strings).
    assert decode_base64("") is None


def test_email_addresses() -> None:
    assert is_email_address("jan.janssen+kt@zorg.example.nl")
    assert not is_email_address("a" * 65 + "@example.com")
    assert not is_email_address("jan@" + "a" * 250 + ".nl")
