"""The Spreekuur.nl notification contract for a Communication (category `melding`).

An XIS sends a one-way message to a patient: a subject (`topic.text`), one message
text (`payload[].contentString`), up to five attachments (`payload[].contentAttachment`),
and the patient as a contained Patient with a BSN, referenced by `recipient`. The hub
refuses a Communication that breaks the contract with a 400 listing every violation at
once, so a sender fixes its request in one round trip instead of one error at a time.

These rules run together with the FHIR R4 model check (one 400 reports both), so they see
requests whose structure is broken too: they never assume the shape and never raise on
odd JSON. Where a rule and the model refuse the same element for the same reason, the
rule's issue is the one reported.

Diagnostics name the element and the rule but never echo the patient's data (BSN,
e-mail address, subject, message): they end up in AuditEvent.outcomeDesc, which an
auditor reads.

A notification reaches one patient only. Every contained resource has an id of its
own, and every `recipient` resolves to exactly one contained resource, a Patient: the
search index (`patient-identifier`) resolves `#id` to every contained resource with that
id, so two Patients sharing one id would file the message under both BSNs.

Lengths are counted in characters (Unicode code points, as JSON Schema `maxLength`
counts them), not in bytes of UTF-8.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Generator, Iterator, Mapping
from typing import Any, TypeGuard

from hub.fhir.outcome import Issue
from hub.rules import filetypes
from hub.rules.bsn import BSN_SYSTEM, is_valid_bsn
from hub.syntax import is_email_address

CATEGORY_CODE = "melding"
REQUIRED_STATUS = "completed"
TOPIC_MAX_CHARACTERS = 500
MESSAGE_MAX_CHARACTERS = 10_000
MAX_ATTACHMENTS = 5

_ROOT = "Communication"

# The whitespace of FHIR R4's base64Binary pattern `(\s*([0-9a-zA-Z\+/=]){4}\s*)+` (its
# `\s` is XML Schema's: space, tab, CR and LF), allowed between groups of four characters.
_BASE64_WHITESPACE = re.compile(r"[ \t\r\n]+")


def validate_communication(resource: Mapping[str, Any]) -> list[Issue]:
    """Every way `resource` breaks the notification contract; empty when it complies."""
    return [
        *_check_status(resource),
        *_check_category(resource),
        *_check_topic(resource),
        *_check_payload(resource),
        *_check_recipient(resource),
        *_check_contained_ids(resource),
        *_check_contained_patients(resource),
    ]


def contained_patient(resource: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The contained Patient that the first `recipient` references as `#id`, if any.

    None when the reference resolves to no contained resource, to one that is no
    Patient, or to more than one (an ambiguous id names no patient).
    """
    recipients = _array(resource.get("recipient"))
    if not recipients or not isinstance(recipients[0], Mapping):
        return None
    reference = recipients[0].get("reference")
    if not _is_local_reference(reference):
        return None
    found = _contained_with_id(resource, reference[1:])
    if len(found) != 1 or found[0][1].get("resourceType") != "Patient":
        return None
    return found[0][1]


def patient_bsn(resource: Mapping[str, Any]) -> str | None:
    """The recipient's BSN, only when it passes the eleven-test."""
    patient = contained_patient(resource)
    if patient is None:
        return None
    for _, value in _bsn_values(patient):
        if isinstance(value, str) and is_valid_bsn(value):
            return value
    return None


def patient_email(resource: Mapping[str, Any]) -> str | None:
    """The recipient's first usable e-mail address (a `telecom` not marked `old`)."""
    patient = contained_patient(resource)
    return None if patient is None else email_of(patient)


def email_of(patient: Mapping[str, Any]) -> str | None:
    """A Patient's first usable e-mail address (a `telecom` not marked `old`)."""
    for _, telecom in _email_telecoms(patient):
        value = telecom.get("value")
        if telecom.get("use") != "old" and isinstance(value, str) and is_email_address(value):
            return value
    return None


def decode_base64(text: str) -> bytes | None:
    """The bytes of base64 `text` as FHIR R4 base64Binary holds it, or None when it is not.

    The characters are RFC 4648's: one or more groups of four from the base64 alphabet,
    `=` padding only to complete the last group, and zero padding bits (so they have one
    meaning). Whitespace and line breaks may separate groups of four, as FHIR R4's
    base64Binary pattern allows (and MIME-style base64, in lines of 76, has them).
    """
    groups = _BASE64_WHITESPACE.split(text)
    compact = "".join(groups)
    if not (compact and text.isascii()) or any(len(group) % 4 for group in groups):
        return None
    try:
        decoded = base64.b64decode(compact, validate=True)
    except binascii.Error:
        return None
    # Re-encoding catches what b64decode forgives: misplaced padding and non-zero
    # padding bits ("QR==" decodes like "QQ==").
    if base64.b64encode(decoded).decode("ascii") != compact:
        return None
    return decoded


# -- status, category, topic ----------------------------------------------------------


def _check_status(resource: Mapping[str, Any]) -> Iterator[Issue]:
    status = resource.get("status")
    expression = f"{_ROOT}.status"
    if status is None:
        yield _required(
            expression, f"Communication.status is missing; it must be {REQUIRED_STATUS!r}"
        )
    elif status != REQUIRED_STATUS:
        yield Issue(
            "value",
            f"Communication.status is {_show(status)}; a notification must have status "
            f"{REQUIRED_STATUS!r}",
            (expression,),
        )


def _check_category(resource: Mapping[str, Any]) -> Iterator[Issue]:
    categories = resource.get("category")
    expression = f"{_ROOT}.category"
    if categories is None or categories == []:
        yield _required(
            expression,
            f"Communication.category is missing; a notification needs a category coding "
            f"with code {CATEGORY_CODE!r}",
        )
    elif not isinstance(categories, list):
        yield _invalid(expression, "Communication.category must be an array of CodeableConcepts")
    elif not any(
        isinstance(coding, Mapping) and coding.get("code") == CATEGORY_CODE
        for category in categories
        if isinstance(category, Mapping)
        for coding in _array(category.get("coding"))
    ):
        yield Issue(
            "value",
            f"No Communication.category coding has code {CATEGORY_CODE!r}; only "
            f"notifications ({CATEGORY_CODE}) are supported",
            (expression,),
        )


def _check_topic(resource: Mapping[str, Any]) -> Iterator[Issue]:
    topic = resource.get("topic")
    if topic is not None and not isinstance(topic, Mapping):
        yield _invalid(f"{_ROOT}.topic", "Communication.topic must be a CodeableConcept")
        return
    text = topic.get("text") if topic is not None else None
    yield from _check_text(
        text,
        f"{_ROOT}.topic.text",
        "Communication.topic.text (the subject shown to the patient)",
        TOPIC_MAX_CHARACTERS,
    )


def _check_text(value: Any, expression: str, what: str, max_characters: int) -> Iterator[Issue]:
    if value is None:
        yield _required(expression, f"{what} is missing")
    elif not isinstance(value, str):
        yield _invalid(expression, f"{what} must be a string")
    elif not value:
        yield Issue("value", f"{what} is empty; it needs at least 1 character", (expression,))
    elif len(value) > max_characters:
        yield Issue(
            "too-long",
            f"{what} has {len(value)} characters; at most {max_characters} are allowed",
            (expression,),
        )


# -- payload: one message and up to five attachments ----------------------------------


def _check_payload(resource: Mapping[str, Any]) -> Iterator[Issue]:
    payload = resource.get("payload")
    expression = f"{_ROOT}.payload"
    if payload is None or payload == []:
        yield _required(
            expression,
            "Communication.payload is missing; it needs one entry with contentString "
            "(the message text)",
        )
        return
    if not isinstance(payload, list):
        yield _invalid(expression, "Communication.payload must be an array")
        return

    messages = sum(_is_mapping_with(entry, "contentString") for entry in payload)
    attachments = sum(_is_mapping_with(entry, "contentAttachment") for entry in payload)
    if not messages:
        yield _required(
            expression, "No Communication.payload entry holds the message text (contentString)"
        )
    elif messages > 1:
        yield _invalid(
            expression,
            f"{messages} Communication.payload entries hold a contentString; a "
            f"notification has exactly one message text",
        )
    if attachments > MAX_ATTACHMENTS:
        yield _invalid(
            expression,
            f"The notification has {attachments} attachments; at most "
            f"{MAX_ATTACHMENTS} are allowed",
        )
    for index, entry in enumerate(payload):
        yield from _check_payload_entry(entry, f"{expression}[{index}]")


def _check_payload_entry(entry: Any, path: str) -> Iterator[Issue]:
    if not isinstance(entry, Mapping):
        yield _invalid(path, "A Communication.payload entry must be an object")
        return
    if "contentReference" in entry:
        yield _invalid(
            f"{path}.contentReference",
            "contentReference is not supported; send a file inline as contentAttachment",
        )
    if "contentString" in entry and "contentAttachment" in entry:
        yield _invalid(path, "A payload entry holds either contentString or contentAttachment")
    if "contentString" in entry:
        yield from _check_text(
            entry["contentString"],
            f"{path}.contentString",
            "The message text (contentString)",
            MESSAGE_MAX_CHARACTERS,
        )
    if "contentAttachment" in entry:
        yield from _check_attachment(entry["contentAttachment"], f"{path}.contentAttachment")
    if not entry.keys() & {"contentString", "contentAttachment", "contentReference"}:
        yield _required(path, "A payload entry needs contentString or contentAttachment")


def _check_attachment(attachment: Any, path: str) -> Iterator[Issue]:
    if not isinstance(attachment, Mapping):
        yield _invalid(path, "contentAttachment must be an Attachment object")
        return
    issues: list[Issue] = []
    data = _required_string(attachment, "data", path, issues)
    content_type = _required_string(attachment, "contentType", path, issues)
    title = _required_string(attachment, "title", path, issues)
    yield from issues

    allowed = content_type in filetypes.ALLOWED_CONTENT_TYPES
    if content_type is not None and not allowed:
        yield Issue(
            "value",
            f"Attachment content type {_show(content_type)} is not allowed; allowed are "
            + ", ".join(filetypes.ALLOWED_CONTENT_TYPES),
            (f"{path}.contentType",),
        )
    sniffed = yield from _check_attachment_data(data, content_type if allowed else None, path)
    if title is not None:
        # The title is the download file name: no paths, no hidden or executable
        # extension, and (once the bytes are known to be of the declared type) no
        # extension of another type than the file's.
        for problem in filetypes.title_problems(title, sniffed):
            yield _invalid(f"{path}.title", f"Attachment title {problem}")


def _check_attachment_data(
    data: str | None, content_type: str | None, path: str
) -> Generator[Issue, None, str | None]:
    """Issues with an attachment's data; returns its content type when the bytes are of it.

    `content_type` is the declared type when it is an allowed one, otherwise None.
    """
    if data is None:
        return None
    decoded = decode_base64(data)
    if decoded is None:
        yield _invalid(
            f"{path}.data",
            "Attachment data is not valid base64 (RFC 4648: only A-Z, a-z, 0-9, '+' and "
            "'/' in groups of 4, '=' padding only to complete the last group; whitespace "
            "or line breaks only between groups of 4)",
        )
    elif content_type is None:
        return None
    elif not filetypes.has_content_type(decoded, content_type):
        yield _invalid(
            f"{path}.data",
            f"Attachment is declared as {content_type} but its data is not "
            f"{filetypes.type_name(content_type)}: it is {filetypes.describe(decoded)}",
        )
    else:
        # It is what it says; now what rides along (scripts, macros, appended files).
        for hazard in filetypes.hazards(decoded, content_type):
            yield _invalid(f"{path}.data", f"Attachment data is refused: {hazard}")
        return content_type
    return None


def _required_string(
    mapping: Mapping[str, Any], key: str, path: str, issues: list[Issue]
) -> str | None:
    """`mapping[key]` when it is a non-empty string; otherwise None and an issue why."""
    value = mapping.get(key)
    expression = f"{path}.{key}"
    if value is None:
        issues.append(_required(expression, f"Attachment {key} is missing"))
    elif not isinstance(value, str):
        issues.append(_invalid(expression, f"Attachment {key} must be a string"))
    elif not value:
        issues.append(Issue("value", f"Attachment {key} is empty", (expression,)))
    else:
        return value
    return None


# -- recipient and the contained Patient ----------------------------------------------


def _check_recipient(resource: Mapping[str, Any]) -> Iterator[Issue]:
    recipients = resource.get("recipient")
    expression = f"{_ROOT}.recipient"
    if recipients is None or recipients == []:
        yield _required(
            expression,
            "Communication.recipient is missing; it must reference the contained Patient",
        )
        return
    if not isinstance(recipients, list):
        yield _invalid(expression, "Communication.recipient must be an array of References")
        return
    for index, recipient in enumerate(recipients):
        yield from _check_recipient_reference(resource, recipient, f"{expression}[{index}]")
    references = {
        recipient.get("reference")
        for recipient in recipients
        if isinstance(recipient, Mapping) and _is_local_reference(recipient.get("reference"))
    }
    if len(references) > 1:
        yield _invalid(
            expression,
            "A notification goes to one patient: every recipient must reference the same "
            "contained Patient",
        )


def _check_recipient_reference(
    resource: Mapping[str, Any], recipient: Any, path: str
) -> Iterator[Issue]:
    if not isinstance(recipient, Mapping):
        yield _invalid(path, "A Communication.recipient entry must be a Reference object")
        return
    reference = recipient.get("reference")
    expression = f"{path}.reference"
    if not _is_local_reference(reference):
        yield _invalid(
            expression,
            "The recipient must reference the contained Patient as '#<id>'",
        )
        return
    found = _contained_with_id(resource, reference[1:])
    if not found:
        yield _invalid(
            expression, "The recipient reference does not resolve to a contained resource"
        )
    elif len(found) > 1:
        yield _invalid(
            expression,
            f"The recipient reference resolves to {len(found)} contained resources ("
            + ", ".join(f"{_ROOT}.contained[{index}]" for index, _ in found)
            + "); it must resolve to exactly one, the Patient",
        )
    elif (kind := found[0][1].get("resourceType")) != "Patient":
        yield _invalid(
            expression, f"The recipient references a contained {_show(kind)}, not a Patient"
        )


def _check_contained_ids(resource: Mapping[str, Any]) -> Iterator[Issue]:
    # A `#id` reference resolves to every contained resource with that id (the search
    # index does so too), so a shared id would make a second patient a recipient.
    # Only string ids can be referenced; the model refuses any other.
    first_with: dict[str, int] = {}
    for index, item in enumerate(_array(resource.get("contained"))):
        resource_id = item.get("id") if isinstance(item, Mapping) else None
        if not isinstance(resource_id, str):
            continue
        if resource_id not in first_with:
            first_with[resource_id] = index
            continue
        yield _invalid(
            f"{_ROOT}.contained[{index}].id",
            f"Communication.contained[{index}] has the id of "
            f"Communication.contained[{first_with[resource_id]}]; every contained resource "
            "needs an id of its own",
        )


def _check_contained_patients(resource: Mapping[str, Any]) -> Iterator[Issue]:
    # Every contained Patient is checked, not only the resolved recipient, so a broken
    # reference and a broken Patient are reported together.
    patients = [
        (index, item)
        for index, item in enumerate(_array(resource.get("contained")))
        if isinstance(item, Mapping) and item.get("resourceType") == "Patient"
    ]
    if not patients:
        yield _required(
            f"{_ROOT}.contained",
            "Communication.contained must hold the recipient Patient (with the patient's BSN)",
        )
    for index, patient in patients:
        path = f"{_ROOT}.contained[{index}]"
        yield from _check_bsn(patient, path)
        yield from _check_email_telecoms(patient, path)


def _check_bsn(patient: Mapping[str, Any], path: str) -> Iterator[Issue]:
    values = _bsn_values(patient)
    if not values:
        yield _required(
            f"{path}.identifier",
            f"The contained Patient needs an identifier with system {BSN_SYSTEM} (the BSN)",
        )
        return
    for index, value in values:
        expression = f"{path}.identifier[{index}].value"
        if value is None:
            yield _required(expression, "The BSN identifier has no value")
        elif not isinstance(value, str):
            yield _invalid(expression, "The BSN must be a string of nine digits")
        elif not is_valid_bsn(value):
            hint = (
                "; an eight-digit BSN is written with a leading zero"
                if len(value) == 8 and is_valid_bsn("0" + value)
                else ""
            )
            yield Issue(
                "value",
                f"The BSN is not valid: it must be nine digits passing the eleven-test{hint}",
                (expression,),
            )
    if len({value for _, value in values if isinstance(value, str)}) > 1:
        yield _invalid(f"{path}.identifier", "The contained Patient has more than one BSN")


def _check_email_telecoms(patient: Mapping[str, Any], path: str) -> Iterator[Issue]:
    for index, telecom in _email_telecoms(patient):
        value = telecom.get("value")
        if not (isinstance(value, str) and is_email_address(value)):
            yield Issue(
                "value",
                "The patient's e-mail telecom does not hold a valid e-mail address",
                (f"{path}.telecom[{index}].value",),
            )


def _bsn_values(patient: Mapping[str, Any]) -> list[tuple[int, Any]]:
    return [
        (index, identifier.get("value"))
        for index, identifier in enumerate(_array(patient.get("identifier")))
        if isinstance(identifier, Mapping) and identifier.get("system") == BSN_SYSTEM
    ]


def _email_telecoms(patient: Mapping[str, Any]) -> list[tuple[int, Mapping[str, Any]]]:
    return [
        (index, telecom)
        for index, telecom in enumerate(_array(patient.get("telecom")))
        if isinstance(telecom, Mapping) and telecom.get("system") == "email"
    ]


# -- small helpers --------------------------------------------------------------------


def _contained_with_id(
    resource: Mapping[str, Any], resource_id: str
) -> list[tuple[int, Mapping[str, Any]]]:
    """Every contained resource with this id (with its index): what `#id` resolves to."""
    return [
        (index, item)
        for index, item in enumerate(_array(resource.get("contained")))
        if isinstance(item, Mapping) and item.get("id") == resource_id
    ]


def _is_local_reference(reference: Any) -> TypeGuard[str]:
    return isinstance(reference, str) and len(reference) > 1 and reference.startswith("#")


def _is_mapping_with(value: Any, key: str) -> bool:
    return isinstance(value, Mapping) and key in value


def _array(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _show(value: Any) -> str:
    """A code-like value quoted for a diagnostic, cut short so no payload is echoed."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _required(expression: str, diagnostics: str) -> Issue:
    return Issue("required", diagnostics, (expression,))


def _invalid(expression: str, diagnostics: str) -> Issue:
    return Issue("invalid", diagnostics, (expression,))
