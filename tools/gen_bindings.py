"""Generate hub/fhir/bindings.json: the codes each REQUIRED-bound element may hold.

    python tools/gen_bindings.py [path/to/fhir-r4]

Reads the HL7 R4 definitions in ../shared/reference/fhir-r4/ (default):

- `profiles-resources.json`: every element of a supported resource type whose type is
  `code` and whose binding strength is `required`, with its value set;
- `valuesets.json` and `v3-codesystems.json`: the value sets, expanded from their
  `compose` (included systems, listed concepts, other value sets, exclusions);
- `fhir.schema.json`: the data types (HumanName.use, ContactPoint.system, ...), whose
  StructureDefinitions (`profiles-types.json`) are not in that folder. The HL7 JSON
  schema holds a required binding's codes as the element's `enum`, so the resources'
  expansions are checked against it here too: a disagreement fails loudly.

A value set that cannot be expanded from these files (a filter, or a system they do
not define, such as BCP 13 mime types) is skipped and listed in the output's
`skipped`, and printed. CI has no ../shared, so the output is committed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from fhir.resources.R4B import get_fhir_model_class

from hub.fhir.bindings import GENERATED, class_name
from hub.fhir.search_params import SUPPORTED_TYPES

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT.parent / "shared" / "reference" / "fhir-r4"


class CannotExpand(Exception):
    """A value set whose codes these definition files cannot list."""


class Terminology:
    """The value sets and code systems of the definition bundles, by canonical url."""

    def __init__(self, *bundles: Mapping[str, Any]) -> None:
        self.value_sets: dict[str, Mapping[str, Any]] = {}
        self.code_systems: dict[str, Mapping[str, Any]] = {}
        for bundle in bundles:
            for entry in bundle["entry"]:
                resource = entry["resource"]
                kind = resource["resourceType"]
                if kind == "ValueSet":
                    self.value_sets[resource["url"]] = resource
                elif kind == "CodeSystem":
                    self.code_systems[resource["url"]] = resource

    def expand(self, url: str) -> list[str]:
        """The codes of value set `url` (a `|version` suffix is ignored), in definition order."""
        value_set = self.value_sets.get(url.partition("|")[0])
        if value_set is None:
            raise CannotExpand(f"value set {url} is not defined")
        compose = value_set.get("compose", {})
        codes = [code for part in compose.get("include", []) for code in self._part(part)]
        excluded = {code for part in compose.get("exclude", []) for code in self._part(part)}
        return [code for code in dict.fromkeys(codes) if code not in excluded]

    def _part(self, part: Mapping[str, Any]) -> list[str]:
        if part.get("filter"):
            raise CannotExpand(f"a filter on {part.get('system')}")
        codes: list[str] | None = None
        if "system" in part:
            if part.get("concept"):
                codes = [concept["code"] for concept in part["concept"]]
            else:
                codes = self._system(part["system"])
        for url in part.get("valueSet", []):
            included = self.expand(url)
            codes = included if codes is None else [c for c in codes if c in included]
        return codes or []

    def _system(self, url: str) -> list[str]:
        system = self.code_systems.get(url)
        if system is None or system.get("content", "complete") != "complete":
            raise CannotExpand(f"code system {url} is not defined in full")
        return list(_concepts(system.get("concept", [])))


def _concepts(concepts: list[Mapping[str, Any]]) -> Iterator[str]:
    for concept in concepts:
        yield concept["code"]
        yield from _concepts(concept.get("concept", []))


def _resource_bindings(profiles: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(element path, value set url) of every required-bound code of a supported type."""
    for entry in profiles["entry"]:
        definition = entry["resource"]
        if (
            definition["resourceType"] != "StructureDefinition"
            or definition["id"] not in SUPPORTED_TYPES
        ):
            continue
        for element in definition["snapshot"]["element"]:
            binding = element.get("binding", {})
            types = [kind["code"] for kind in element.get("type", [])]
            if binding.get("strength") == "required" and types == ["code"]:
                yield element["path"], binding["valueSet"]


def _schema_path(definition: str, prop: str) -> str:
    """`Timing_Repeat`, `periodUnit` → `Timing.repeat.periodUnit` (the schema's naming)."""
    head, *backbones = definition.split("_")
    return ".".join([head, *(name[:1].lower() + name[1:] for name in backbones), prop])


def _schema_enums(schema: Mapping[str, Any]) -> dict[str, list[str]]:
    """Every enumerated property of the schema by element path."""
    return {
        _schema_path(name, prop): list(spec["enum"])
        for name, definition in schema["definitions"].items()
        for prop, spec in definition.get("properties", {}).items()
        if "enum" in spec
    }


def _is_element(path: str) -> bool:
    """Whether `path` names a field of a fhir.resources class, as the checker looks it up."""
    parent, _, name = path.rpartition(".")
    try:
        model = get_fhir_model_class(class_name(parent))
    except (KeyError, ValueError):
        return False
    return name in {info.alias or field for field, info in model.model_fields.items()}


def generate(source: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """The document to write, and the skipped elements with the reason."""

    def load(name: str) -> Any:
        return json.loads((source / name).read_text(encoding="utf-8"))

    terminology = Terminology(load("valuesets.json"), load("v3-codesystems.json"))
    schema = load("fhir.schema.json")
    enums = _schema_enums(schema)
    elements: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    for path, url in _resource_bindings(load("profiles-resources.json")):
        value_set = url.partition("|")[0]
        try:
            codes = terminology.expand(url)
        except CannotExpand as reason:
            skipped[path] = f"{value_set}: {reason}"
            continue
        if path in enums and enums[path] != codes:
            raise SystemExit(
                f"{path}: {value_set} expands to {codes}, the schema has {enums[path]}"
            )
        elements[path] = {"valueSet": value_set, "codes": codes}
    resources = set(schema["discriminator"]["mapping"])
    for path, codes in sorted(enums.items()):
        if path.split(".", 1)[0] in resources:
            continue  # only data types, and their backbone elements, come from the schema
        if not _is_element(path):
            # The schema names nested backbones by their last part only
            # (ElementDefinition_Discriminator is ElementDefinition.slicing.discriminator).
            skipped[path] = "the schema's name does not give the element's path"
            continue
        elements[path] = {"valueSet": None, "codes": codes}
    document = {
        "about": (
            "The codes of every element with a REQUIRED binding in FHIR R4 (4.0.1), for the "
            "resource types the hub supports and the data types; generated by "
            "tools/gen_bindings.py; do not edit by hand."
        ),
        "source": "HL7 FHIR R4 profiles-resources.json, valuesets.json, v3-codesystems.json "
        "and fhir.schema.json (data types), http://hl7.org/fhir/R4/downloads.html",
        "license": "CC0-1.0 (HL7 FHIR definitions are public domain: "
        "http://hl7.org/fhir/R4/license.html)",
        "skipped": skipped,
        "elements": dict(sorted(elements.items())),
    }
    return document, skipped


def dump(document: Mapping[str, Any]) -> str:
    """JSON with one line per element: compact, and a diff shows what changed."""
    lines = ["{"]
    for key in ("about", "source", "license", "skipped"):
        lines.append(f" {json.dumps(key)}: {json.dumps(document[key], ensure_ascii=False)},")
    lines.append(' "elements": {')
    items = [
        f"  {json.dumps(path)}: {json.dumps(entry, ensure_ascii=False)}"
        for path, entry in document["elements"].items()
    ]
    lines.append(",\n".join(items))
    lines.append(" }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main() -> None:
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else SOURCE
    document, skipped = generate(source)
    GENERATED.write_text(dump(document), encoding="utf-8")
    print(f"wrote {GENERATED.relative_to(ROOT)}: {len(document['elements'])} elements")
    for path, reason in skipped.items():
        print(f"skipped {path}: {reason}")


if __name__ == "__main__":
    main()
