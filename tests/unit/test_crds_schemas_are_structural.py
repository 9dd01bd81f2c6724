"""Each generated CRD carries an OpenAPI v3 *structural* schema a real API server accepts.

Covers: the openAPIV3Schema validates against the JSON Schema draft-4 meta-schema (which catches
pydantic's numeric exclusive bounds: OpenAPI 3.0 wants booleans); a walker finds no ``$ref``/``$defs``,
no ``anyOf``/``oneOf``/``allOf``, no ``const`` or ``title``, a ``type`` on every node, arrays with
``items``, ``required`` naming declared properties, and a description on every field (``kubectl
explain``); every default is valid where it sits; every CEL rule parses, has a message and points
its ``fieldPath`` at a declared field; printer columns name fields that exist with a matching type;
names, short names, category, scope, version and the status subresource are as DESIGN.md says; and
the converter itself turns JSON Schema 2020-12 constructs into their structural form or refuses them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Annotated, Any

import jsonschema
import pytest
from pydantic import BaseModel, Field
from support import crd_validation as cv

from lightning_op.api import constants, kinds
from lightning_op.manifests import crds

CRDS = {crd["spec"]["names"]["kind"]: crd for crd in crds.build_crds()}
KIND_IDS = list(CRDS)
TYPES = {"object", "array", "string", "integer", "number", "boolean"}
FORBIDDEN_KEYS = {
    "$ref",
    "$defs",
    "definitions",
    "anyOf",
    "oneOf",
    "allOf",
    "not",
    "const",
    "title",
    "uniqueItems",
}
SHORT_NAMES = {"EpisodeCapture": "ec", "RewardLabeling": "rl", "FineTuneJob": "ftj", "ModelPromotion": "mp"}


def walk(schema: Mapping[str, Any], path: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), Mapping):
        yield from walk(schema["items"], f"{path}[*]")
    if isinstance(schema.get("additionalProperties"), Mapping):
        yield from walk(schema["additionalProperties"], f"{path}.*")


@pytest.mark.parametrize("kind", KIND_IDS)
def test_schema_passes_the_draft4_meta_schema(kind: str) -> None:
    schema = cv.openapi_schema(CRDS[kind])
    errors = list(jsonschema.Draft4Validator(jsonschema.Draft4Validator.META_SCHEMA).iter_errors(schema))
    assert not errors, [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]


def test_meta_schema_check_catches_numeric_exclusive_bounds() -> None:
    """pydantic's `gt=0` emits `exclusiveMinimum: 0`; the draft-4 meta-schema must reject that."""
    bad = {"type": "object", "properties": {"x": {"type": "number", "exclusiveMinimum": 0}}}
    assert list(jsonschema.Draft4Validator(jsonschema.Draft4Validator.META_SCHEMA).iter_errors(bad))


@pytest.mark.parametrize("kind", KIND_IDS)
def test_every_node_is_structural(kind: str) -> None:
    problems = []
    for path, node in walk(cv.openapi_schema(CRDS[kind])):
        where = path or "<root>"
        problems += [f"{where}: has {key}" for key in FORBIDDEN_KEYS & set(node)]
        if node.get("type") not in TYPES:
            problems.append(f"{where}: type {node.get('type')!r}")
        for key, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            if key in node and (not isinstance(node[key], bool) or bound not in node):
                problems.append(f"{where}: {key} must be a boolean beside {bound}")
        if node.get("type") == "array" and "items" not in node:
            problems.append(f"{where}: array without items")
        if "properties" in node and "additionalProperties" in node:
            problems.append(f"{where}: properties and additionalProperties together")
        if node.get("additionalProperties") in (True, False):
            problems.append(f"{where}: boolean additionalProperties")
        missing = set(node.get("required", [])) - set(node.get("properties", {}))
        if missing:
            problems.append(f"{where}: required names undeclared {sorted(missing)}")
        if (
            node.get("type") == "object"
            and not (
                "properties" in node
                or "additionalProperties" in node
                or node.get("x-kubernetes-preserve-unknown-fields")
            )
            and path != ".metadata"
        ):
            problems.append(f"{where}: object without properties must preserve unknown fields")
        if any(isinstance(v, Mapping) and {"type": "null"} == dict(v) for v in node.values()):
            problems.append(f"{where}: null type")
    assert not problems, problems


@pytest.mark.parametrize("kind", KIND_IDS)
def test_every_field_has_a_description(kind: str) -> None:
    undocumented = [
        path
        for path, node in walk(cv.openapi_schema(CRDS[kind]))
        if path and path != ".metadata" and not path.endswith(("[*]", ".*")) and not node.get("description")
    ]
    assert not undocumented, f"fields without description (kubectl explain shows nothing): {undocumented}"


@pytest.mark.parametrize("kind", KIND_IDS)
def test_optional_fields_are_nullable_not_any_of(kind: str) -> None:
    schema = cv.openapi_schema(CRDS[kind])
    nullable = [path for path, node in walk(schema) if node.get("nullable")]
    assert nullable, "optional fields should be marked nullable: true"
    assert "anyOf" not in str(schema)


@pytest.mark.parametrize("kind", KIND_IDS)
def test_defaults_are_valid_where_they_sit(kind: str) -> None:
    problems = []
    for path, node in walk(cv.openapi_schema(CRDS[kind])):
        if "default" in node:
            value = cv.apply_defaults(node, node["default"])
            problems += [f"{path}: default {node['default']!r}: {e}" for e in cv.schema_errors(node, value)]
    assert not problems, problems


@pytest.mark.parametrize("kind", KIND_IDS)
def test_cel_rules_parse_and_carry_messages(kind: str) -> None:
    schema = cv.openapi_schema(CRDS[kind])
    for path, entry in cv.cel_rules(schema):
        cv.compile_rule(entry["rule"])
        assert entry.get("message"), f"{path}: rule {entry['rule']!r} has no message"
        if "oldSelf" in entry["rule"]:
            assert "[*]" not in path, f"{path}: transition rules cannot sit under a list"
        if "fieldPath" in entry:
            node = schema
            for part in filter(None, path.split(".")):
                if part.endswith("[*]"):
                    node = node["properties"][part.removesuffix("[*]")]["items"]
                else:
                    node = node["properties"][part]
            target = entry["fieldPath"].lstrip(".")
            assert target in node.get("properties", {}), (
                f"{path}: fieldPath {entry['fieldPath']} is not a field"
            )


def test_the_issue_cel_rules_are_present() -> None:
    rules = {
        (kind, path, entry["rule"])
        for kind, crd in CRDS.items()
        for path, entry in cv.cel_rules(cv.openapi_schema(crd))
    }
    assert ("ModelPromotion", "spec.model", "has(self.fineTuneJobRef) != has(self.name)") in rules
    assert ("FineTuneJob", "spec.backend", "self == oldSelf") in rules
    assert ("FineTuneJob", "spec.baseModel", "self == oldSelf") in rules
    assert any(
        k == "FineTuneJob" and p == "spec.evaluation" and "self.grader.range" in r for k, p, r in rules
    )


def _resolve(schema: Mapping[str, Any], json_path: str) -> Mapping[str, Any] | None:
    """The schema node a printer column's path names; ``list[?(@.type=="Ready")]`` is an item of
    ``list`` whose ``type`` field exists."""
    node: Mapping[str, Any] = schema
    for part, filtered in re.findall(r"\.?([A-Za-z]\w*)(\[\?\(@\.\w+==\"\w+\"\)\])?", json_path):
        props = node.get("properties", {})
        if part not in props:
            return None
        node = props[part]
        if filtered:
            field = re.search(r"@\.(\w+)", filtered)
            items = node.get("items") or {}
            if node.get("type") != "array" or field is None or field[1] not in items.get("properties", {}):
                return None
            node = items
    return node


@pytest.mark.parametrize("kind", KIND_IDS)
def test_printer_columns_name_existing_fields(kind: str) -> None:
    version = CRDS[kind]["spec"]["versions"][0]
    columns = version["additionalPrinterColumns"]
    assert columns[0]["name"] == "Phase" and columns[-1]["name"] == "Age"
    schema = version["schema"]["openAPIV3Schema"]
    for column in columns:
        if column["jsonPath"] == ".metadata.creationTimestamp":
            continue
        node = _resolve(schema, column["jsonPath"])
        assert node is not None, f"{column['name']}: {column['jsonPath']} is not in the schema"
        expected = {"date": "string"}.get(column["type"], column["type"])
        assert node["type"] == expected, (
            f"{column['name']}: column type {column['type']}, field type {node['type']}"
        )


@pytest.mark.parametrize("kind", KIND_IDS)
def test_names_scope_version_and_status_subresource(kind: str) -> None:
    spec = CRDS[kind]["spec"]
    info = kinds.kind_info(kind)
    assert CRDS[kind]["metadata"]["name"] == f"{info.plural}.{constants.GROUP}"
    assert spec["group"] == "lightning-op.dev" and spec["scope"] == "Namespaced"
    assert spec["names"]["shortNames"] == [SHORT_NAMES[kind]]
    assert spec["names"]["categories"] == ["lightning"]
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert {"phase", "observedGeneration", "conditions"} <= set(status)
    assert status["phase"]["enum"] == [p.value for p in info.phases]
    assert status["conditions"]["x-kubernetes-list-type"] == "map"


# --- the converter on its own --------------------------------------------------------------------------


class _Inner(BaseModel):
    """An inner object."""

    ratio: Annotated[float, Field(gt=0, lt=1)] = 0.5


class _Outer(BaseModel):
    inner: _Inner | None = Field(default=None, description="Optional inner object.")
    free: dict[str, Any] = Field(default_factory=dict, description="Free-form.")
    labels: dict[str, str] = Field(default_factory=dict, description="String map.")
    kind: Annotated[str, Field(pattern="^x$")] = "x"


def test_converter_inlines_refs_and_rewrites_bounds_and_nullability() -> None:
    out = crds.to_structural(_Outer.model_json_schema())
    inner = out["properties"]["inner"]
    assert inner["nullable"] is True and inner["type"] == "object"
    assert inner["description"] == "Optional inner object."
    ratio = inner["properties"]["ratio"]
    assert ratio == {
        "type": "number",
        "default": 0.5,
        "minimum": 0,
        "exclusiveMinimum": True,
        "maximum": 1,
        "exclusiveMaximum": True,
    }
    assert out["properties"]["free"] == {
        "type": "object",
        "description": "Free-form.",
        "x-kubernetes-preserve-unknown-fields": True,
    }
    assert out["properties"]["labels"]["additionalProperties"] == {"type": "string"}
    assert "title" not in str(out) and "$ref" not in str(out)


class _Node(BaseModel):
    child: _Node | None = None


class _Union(BaseModel):
    value: int | str = 0


@pytest.mark.parametrize(
    "model, message",
    [(_Node, "recursive"), (_Union, "anyOf")],
    ids=["recursive-model", "union-of-two-types"],
)
def test_converter_refuses_what_has_no_structural_form(model: type[BaseModel], message: str) -> None:
    with pytest.raises(crds.SchemaConversionError, match=message):
        crds.to_structural(model.model_json_schema())
