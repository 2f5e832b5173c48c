"""Required bindings and primitive JSON types (hub.fhir.bindings) and their generated table."""

from __future__ import annotations

import importlib.util
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

from hub.fhir.bindings import GENERATED, _table, binding, check_values, class_name, token_codes
from hub.fhir.search_params import SUPPORTED_TYPES


def _generator() -> ModuleType:
    # tools/ is not a package: load the script by path, as `python tools/…` runs it.
    path = Path(__file__).resolve().parents[2] / "tools" / "gen_bindings.py"
    spec = importlib.util.spec_from_file_location("gen_bindings", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen_bindings = _generator()


def issues(resource: dict[str, Any]) -> list[tuple[str, str]]:
    return [(issue.code, issue.expression[0]) for issue in check_values(resource)]


def test_the_committed_table_is_what_the_generator_writes() -> None:
    """CI has ../shared beside the clone: a stale or hand-edited table fails here."""
    document, skipped = gen_bindings.generate(gen_bindings.SOURCE)
    assert gen_bindings.dump(document) == GENERATED.read_text(encoding="utf-8")
    # The BCP 13 mime types cannot be expanded from the definition files.
    assert set(skipped) == {
        "Endpoint.payloadMimeType",
        "Subscription.channel.payload",
        "ElementDefinition.discriminator.type",  # the schema flattens its path
    }


def test_the_table_covers_the_issue_examples_and_the_data_types() -> None:
    codes = {path: entry.codes for path, entry in _table().items()}
    assert codes["Patient.gender"] == ("male", "female", "other", "unknown")
    assert "completed" in codes["Task.status"] and "bogus" not in codes["Task.status"]
    assert "order" in codes["Task.intent"]
    assert "completed" in codes["Communication.status"]
    assert codes["Subscription.status"] == ("requested", "active", "error", "off")
    assert "nickname" in codes["HumanName.use"]
    assert "email" in codes["ContactPoint.system"]
    assert codes["Timing.repeat.periodUnit"] == ("s", "min", "h", "d", "wk", "mo", "a")
    assert binding("Patient.name") is None  # not a code
    status = binding("Task.status")
    assert status is not None and status.value_set == "http://hl7.org/fhir/ValueSet/task-status"


def test_every_table_path_names_a_field_of_a_model() -> None:
    """The checker finds an element by the model's class and field names: they must exist."""
    for path in _table():
        parent, _, name = path.rpartition(".")
        model = get_fhir_model_class(class_name(parent))
        assert name in {info.alias or field for field, info in model.model_fields.items()}, path
    resource_types = {path.split(".")[0] for path in _table()}
    assert {"Patient", "Task", "Communication", "Subscription", "AuditEvent"} <= resource_types
    assert resource_types - {"Patient"} <= {*SUPPORTED_TYPES, *_data_types()}


def _data_types() -> set[str]:
    return {path.split(".")[0] for path in _table() if path.split(".")[0] not in SUPPORTED_TYPES}


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        ({"gender": "xx"}, [("code-invalid", "Patient.gender")]),
        ({"gender": "Male"}, [("code-invalid", "Patient.gender")]),  # codes are case-sensitive
        ({"gender": "unknown"}, []),
        ({"active": "yes"}, [("structure", "Patient.active")]),
        ({"active": "true"}, [("structure", "Patient.active")]),
        ({"active": 0}, [("structure", "Patient.active")]),
        ({"active": False}, []),
        ({"multipleBirthInteger": "2"}, [("structure", "Patient.multipleBirthInteger")]),
        ({"multipleBirthInteger": True}, [("structure", "Patient.multipleBirthInteger")]),
        ({"multipleBirthInteger": Decimal("2.5")}, [("structure", "Patient.multipleBirthInteger")]),
        ({"multipleBirthInteger": 2}, []),
        ({"multipleBirthBoolean": "false"}, [("structure", "Patient.multipleBirthBoolean")]),
        ({"birthDate": 2020}, [("structure", "Patient.birthDate")]),
        ({"name": [{"given": ["a", None, 5]}]}, [("structure", "Patient.name[0].given[2]")]),
        ({"name": [{"use": "usual"}, {"use": "bijnaam"}]},
         [("code-invalid", "Patient.name[1].use")]),
        ({"contact": [{"gender": "f"}]}, [("code-invalid", "Patient.contact[0].gender")]),
        ({"contact": [{"telecom": [{"use": "cell"}]}]},
         [("code-invalid", "Patient.contact[0].telecom[0].use")]),
        ({"_active": {"extension": [{"url": "u", "valueBoolean": "no"}]}},
         [("structure", "Patient._active.extension[0].valueBoolean")]),
        ({"extension": [{"url": "u", "valueDecimal": "1.5"}]},
         [("structure", "Patient.extension[0].valueDecimal")]),
        ({"extension": [{"url": "u", "valueDecimal": Decimal("1.5")}]}, []),
        ({"contained": [{"resourceType": "Patient", "gender": "x"}]},
         [("code-invalid", "Patient.contained[0].gender")]),
        # What the model refuses on its own shape is left to it.
        ({"name": "Jan", "gender": ["male"], "bogus": 1, "contained": [{"gender": "x"}]}, []),
    ],
)  # fmt: skip
def test_check_values(resource: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    assert issues({"resourceType": "Patient", **resource}) == expected


def test_a_refusal_names_the_element_and_every_code() -> None:
    [issue] = check_values({"resourceType": "Task", "status": "bogus", "intent": "order"})
    assert issue.expression == ("Task.status",)
    assert issue.diagnostics.startswith("Task.status must be one of the codes draft, requested,")
    assert "http://hl7.org/fhir/ValueSet/task-status" in issue.diagnostics
    assert issue.diagnostics.endswith('not "bogus"')


def test_an_unknown_type_is_left_to_the_model() -> None:
    assert check_values({"resourceType": "Nope", "gender": "x"}) == []
    assert check_values({"gender": "x"}) == []


def test_token_codes_of_a_search_parameter_expression() -> None:
    task_status = token_codes("Task.status")
    assert task_status is not None and task_status.allows("completed")
    assert not task_status.allows("compleeted")
    channel = token_codes("Subscription.channel.type")
    assert channel is not None and channel.allows("rest-hook")
    assert token_codes("Patient.name") is None
    assert token_codes("Patient.gender | Practitioner.gender") is not None
    assert token_codes("Patient.gender | Patient.identifier") is None  # one branch is unbound
    assert token_codes("Patient.gender.where(true)") is None  # not a plain path
