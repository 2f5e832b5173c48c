from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

from hub.fhir.search_params import (
    GENERATED,
    KOPPELTAAL_PARAMS,
    SUPPORTED_TYPES,
    SearchParam,
    params_for,
)


def _generator() -> ModuleType:
    # tools/ is not a package: load the script by path, as `python tools/…` runs it.
    path = Path(__file__).resolve().parents[2] / "tools" / "gen_search_params.py"
    spec = importlib.util.spec_from_file_location("gen_search_params", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GENERATOR = _generator()


def test_supported_types_in_order() -> None:
    assert SUPPORTED_TYPES == (
        "Communication", "Subscription", "AuditEvent", "Patient", "Task", "Device",
        "Organization", "Practitioner", "RelatedPerson", "CareTeam", "Endpoint",
        "ActivityDefinition",
    )  # fmt: skip


def test_r4_parameters_with_the_expression_for_this_type() -> None:
    status = params_for("Task")["status"]
    assert status == SearchParam(
        code="status",
        type="token",
        base="Task",
        expression="Task.status",
        url="http://hl7.org/fhir/SearchParameter/Task-status",
    )
    identifier = params_for("CareTeam")["identifier"]
    assert identifier.expression == "CareTeam.identifier"
    assert params_for("Task")["patient"].expression == "Task.for.where(resolve() is Patient)"
    assert params_for("Task")["patient"].targets == ("Patient",)


def test_unevaluable_parameters_are_left_out() -> None:
    for resource_type in SUPPORTED_TYPES:
        codes = set(params_for(resource_type))
        assert not codes & {"_text", "_content", "_query", "_has", "_list"}
        assert {"_id", "_lastUpdated", "resource-origin"} <= codes
    assert "context-quantity" not in params_for("ActivityDefinition")  # quantity
    assert "context-type-value" not in params_for("ActivityDefinition")  # composite


def test_phonetic_is_a_string_parameter_matched_by_sound() -> None:
    having = [rtype for rtype in SUPPORTED_TYPES if "phonetic" in params_for(rtype)]
    assert having == ["Patient", "Organization", "Practitioner", "RelatedPerson"]
    for resource_type in having:
        phonetic = params_for(resource_type)["phonetic"]
        # FHIR (and so the CapabilityStatement) says string; the hub matches it by sound.
        assert (phonetic.type, phonetic.kind) == ("string", "phonetic")
        assert phonetic.expression == f"{resource_type}.name"
    assert params_for("Patient")["family"].kind == "string"


def test_koppeltaal_parameters() -> None:
    origin = params_for("Communication")["resource-origin"]
    assert (origin.type, origin.targets) == ("reference", ("Device",))
    assert origin.url == "http://koppeltaal.nl/fhir/SearchParameter/resource-origin-extension"
    assert params_for("Task")["instantiates"].targets == ("ActivityDefinition",)
    assert {"traceId", "requestId", "correlationId"} <= set(params_for("AuditEvent"))
    assert params_for("ActivityDefinition")["participant"].expression == (
        "ActivityDefinition.participant.type"
    )
    for custom in KOPPELTAAL_PARAMS:
        assert custom.url.startswith("http://koppeltaal.nl/fhir/SearchParameter/")


def test_columns_and_unknown_types() -> None:
    assert params_for("Task")["_id"].column == "id"
    assert params_for("Task")["_lastUpdated"].column == "last_updated"
    assert params_for("Task")["status"].column is None
    assert params_for("Observation") == {}


def test_generated_file_names_its_licence() -> None:
    document = json.loads(GENERATED.read_text(encoding="utf-8"))
    assert document["license"].startswith("CC0")


@pytest.mark.skipif(
    not GENERATOR.SOURCE.exists(), reason="the HL7 definitions are not next to the repo"
)
def test_generated_file_is_up_to_date() -> None:
    assert json.loads(GENERATED.read_text(encoding="utf-8")) == GENERATOR.generate(GENERATOR.SOURCE)
