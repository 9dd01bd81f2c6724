"""Validate a custom resource against a CRD the way the API server does, without an API server.

Steps, in the API server's order: apply the schema's defaults (nested ``default: {}`` included),
reject unknown fields (what ``kubectl apply`` does with its default strict field validation), check
the OpenAPI schema with ``jsonschema`` (draft 4, whose boolean ``exclusiveMinimum`` matches OpenAPI
3.0; ``nullable`` turned into a ``null`` type), then evaluate every ``x-kubernetes-validations`` CEL
rule with ``celpy`` (cel-python) where its value is present, ``oldSelf`` bound for transition rules
when an old object is given. Values are typed for CEL from the schema as Kubernetes does: ``number``
is a double, ``integer`` an int, a ``date-time`` string a timestamp.

Every problem is a ``FieldError`` whose path is the Kubernetes field path (``spec.dataset.minReward``,
``spec.resources.tolerations[0].value``), so tests can assert that a rejection names the field.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import celpy
import jsonschema
from celpy import celtypes


@dataclass(frozen=True)
class FieldError:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def openapi_schema(crd: Mapping[str, Any]) -> dict[str, Any]:
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


# --- defaulting and pruning -------------------------------------------------------------------------


def apply_defaults(schema: Mapping[str, Any], value: Any) -> Any:
    """A copy of ``value`` with the schema's defaults filled in, recursively (as the API server does)."""
    value = copy.deepcopy(value)
    _default_in_place(schema, value)
    return value


def _default_in_place(schema: Mapping[str, Any], value: Any) -> None:
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for name, sub in props.items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
        for name, item in value.items():
            if name in props:
                _default_in_place(props[name], item)
            elif isinstance(schema.get("additionalProperties"), Mapping):
                _default_in_place(schema["additionalProperties"], item)
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for item in value:
            _default_in_place(schema["items"], item)


def unknown_fields(schema: Mapping[str, Any], value: Any, path: str = "") -> list[FieldError]:
    """Fields the schema does not declare (the API server prunes them; kubectl --validate=strict refuses)."""
    errors: list[FieldError] = []
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for name, item in value.items():
            where = _join(path, name)
            if props is not None and name in props:
                errors += unknown_fields(props[name], item, where)
            elif isinstance(extra, Mapping):
                errors += unknown_fields(extra, item, where)
            elif props is not None and not schema.get("x-kubernetes-preserve-unknown-fields"):
                errors.append(FieldError(where, "unknown field"))
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for index, item in enumerate(value):
            errors += unknown_fields(schema["items"], item, _join(path, index))
    return errors


# --- OpenAPI schema -> JSON Schema draft 4 ----------------------------------------------------------


def to_json_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """The OpenAPI 3.0 schema as plain draft-4 JSON Schema: ``nullable`` becomes a ``null`` type."""
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "properties":
            out[key] = {name: to_json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, Mapping):
            out[key] = to_json_schema(value)
        elif key == "nullable" or key.startswith("x-kubernetes-"):
            continue
        else:
            out[key] = value
    if schema.get("nullable"):
        out["type"] = [schema["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out


_format_checker = jsonschema.FormatChecker(formats=())


@_format_checker.checks("date-time", raises=ValueError)
def _is_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if not re.match(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$", value):
        raise ValueError(f"{value!r} is not an RFC 3339 date-time")
    datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    return True


def schema_errors(schema: Mapping[str, Any], value: Any, root: str = "") -> list[FieldError]:
    validator = jsonschema.Draft4Validator(to_json_schema(schema), format_checker=_format_checker)
    errors: list[FieldError] = []
    for err in sorted(validator.iter_errors(value), key=lambda e: list(map(str, e.absolute_path))):
        path = root
        for part in err.absolute_path:
            path = _join(path, part)
        if err.validator == "required":
            missing = re.match(r"'([^']+)' is a required property", err.message)
            errors.append(FieldError(_join(path, missing.group(1)) if missing else path, "Required value"))
        elif err.validator == "enum":
            errors.append(
                FieldError(
                    path, f"Unsupported value: {err.instance!r}: supported values: {err.validator_value}"
                )
            )
        else:
            errors.append(FieldError(path, err.message))
    return errors


# --- CEL ---------------------------------------------------------------------------------------------


_env = celpy.Environment()


@functools.cache
def compile_rule(rule: str) -> Any:
    """A runnable program for one CEL rule (raises ``celpy.CELParseError`` when it does not parse)."""
    return _env.program(_env.compile(rule))


def to_cel(value: Any, schema: Mapping[str, Any]) -> Any:
    """A CEL value typed from the schema, as the API server types it."""
    if value is None:
        return None
    type_ = schema.get("type")
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        items: dict[Any, Any] = {}
        for name, item in value.items():
            if props is not None and name in props:
                items[celtypes.StringType(name)] = to_cel(item, props[name])
            elif isinstance(extra, Mapping):
                items[celtypes.StringType(name)] = to_cel(item, extra)
            elif props is None:
                items[celtypes.StringType(name)] = celpy.json_to_cel(item)
            # Unknown fields under x-kubernetes-preserve-unknown-fields are invisible to CEL.
        return celtypes.MapType(items)
    if isinstance(value, list):
        item_schema = schema.get("items", {})
        return celtypes.ListType([to_cel(item, item_schema) for item in value])
    if type_ == "number" and isinstance(value, int | float) and not isinstance(value, bool):
        return celtypes.DoubleType(float(value))
    if type_ == "integer" and isinstance(value, int) and not isinstance(value, bool):
        return celtypes.IntType(value)
    if type_ == "string" and schema.get("format") == "date-time" and isinstance(value, str):
        return celtypes.TimestampType(value)
    return celpy.json_to_cel(value)


def _evaluate(rule: str, activation: dict[str, Any]) -> tuple[bool, str | None]:
    try:
        result = compile_rule(rule).evaluate(activation)
    except celpy.CELEvalError as exc:
        return False, str(exc.args[0]) if exc.args else str(exc)
    if isinstance(result, Exception):
        return False, str(result)
    return bool(result), None


def cel_errors(
    schema: Mapping[str, Any], value: Any, old: Any = None, path: str = "", has_old: bool = False
) -> list[FieldError]:
    """Evaluate every CEL rule whose value is present; transition rules only when ``has_old``."""
    if value is None:
        return []
    errors: list[FieldError] = []
    for entry in schema.get("x-kubernetes-validations", []):
        rule = entry["rule"]
        activation = {"self": to_cel(value, schema)}
        if "oldSelf" in rule:
            if not has_old:
                continue
            activation["oldSelf"] = to_cel(old, schema)
        ok, problem = _evaluate(rule, activation)
        if not ok:
            where = path + entry.get("fieldPath", "")
            message = entry.get("message", f"failed rule: {rule}")
            errors.append(FieldError(where, message if problem is None else f"{message} ({problem})"))
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for name, item in value.items():
            if name in props:
                old_has = has_old and isinstance(old, dict) and name in old
                errors += cel_errors(
                    props[name], item, old.get(name) if old_has else None, _join(path, name), old_has
                )
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for index, item in enumerate(value):
            errors += cel_errors(schema["items"], item, None, _join(path, index), False)
    return errors


def cel_rules(schema: Mapping[str, Any], path: str = "") -> list[tuple[str, dict[str, str]]]:
    """Every (field path, rule entry) in a schema."""
    found = [(path, entry) for entry in schema.get("x-kubernetes-validations", [])]
    for name, sub in schema.get("properties", {}).items():
        found += cel_rules(sub, _join(path, name))
    if isinstance(schema.get("items"), Mapping):
        found += cel_rules(schema["items"], path + "[*]")
    return found


# --- all together -------------------------------------------------------------------------------------


def validate(
    crd: Mapping[str, Any], obj: Mapping[str, Any], old: Mapping[str, Any] | None = None
) -> list[FieldError]:
    """Every reason the API server would refuse ``obj`` (an update of ``old`` when given)."""
    schema = openapi_schema(crd)
    body = {k: v for k, v in obj.items() if k != "metadata"}
    body = apply_defaults(schema, body)
    old_body = (
        apply_defaults(schema, {k: v for k, v in old.items() if k != "metadata"}) if old is not None else None
    )
    errors = unknown_fields(schema, body)
    errors += schema_errors(schema, body)
    if not errors:
        # The API server runs CEL on a schema-valid object only (types must hold for the rules).
        errors += cel_errors(schema, body, old_body, "", old_body is not None)
    return errors
