"""values.yaml and the templates agree: every value does something, says what, and nothing else is read.

Covers: every setting in values.yaml (a scalar, a list, an empty map, or a free-form map handed to
Kubernetes whole such as ``resources``) changes the rendered chart, or fails the render with a
message, when it is changed, in the defaults, with every toggle on or with every toggle off, so no
value is silently ignored (the one exception is listed in ``INERT`` with its reason); every such
setting has a comment line directly above it that says what it does; every ``.Values`` path a
template reads (directly, or through a ``$variable := .Values...`` alias) exists in values.yaml.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

CHART_DIR = Path(__file__).resolve().parents[2] / "charts" / "lightning-op"
VALUES_TEXT = (CHART_DIR / "values.yaml").read_text(encoding="utf-8")
VALUES: dict[str, Any] = yaml.safe_load(VALUES_TEXT)
#: maps handed to Kubernetes as a whole: one setting, documented once
FREE_FORM = {"resources", "labels"}
#: settings that cannot change the render in this build, and why
INERT = {
    "store.cosmos.existingSecret.key": (
        "read with store.cosmos.existingSecret.name, which fails the render while the Cosmos DB store"
        " is planned"
    ),
}
#: the value sets a changed setting is tried in: a setting may only act while its feature is on or off
CONTEXTS = ("defaults", "all-toggles-on", "all-toggles-off")


def _settings(tree: dict[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    for key, value in tree.items():
        if isinstance(value, dict) and value and key not in FREE_FORM:
            yield from _settings(value, (*prefix, key))
        else:
            yield (*prefix, key), value


SETTINGS = dict(_settings(VALUES))
IDS = [".".join(path) for path in SETTINGS]


def _changed(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        return f"{value}x" if value else "sentinel"
    if isinstance(value, list):
        return value + value if value else ["sentinel"]
    if isinstance(value, dict):
        return {"sentinel.example.com/key": "value"}
    raise TypeError(f"no change for {value!r}")


def _nested(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out: Any = value
    for key in reversed(path):
        out = {key: out}
    assert isinstance(out, dict)
    return out


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = (
            _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def _outcome(render: Any, values: dict[str, Any]) -> dict[str, str] | str:
    """The rendered files, or the render's error message."""
    try:
        files: dict[str, str] = render(values).files
        return files
    except helm_python.HelmError as exc:
        return str(exc)


@pytest.mark.parametrize("path", list(SETTINGS), ids=IDS)
def test_every_value_changes_the_render(
    render: Any, value_sets: dict[str, dict[str, Any]], path: tuple[str, ...]
) -> None:
    name = ".".join(path)
    if name in INERT:
        pytest.skip(INERT[name])
    change = _nested(path, _changed(SETTINGS[path]))
    for case in CONTEXTS:
        base = value_sets[case]
        if _outcome(render, base) != _outcome(render, _merged(base, change)):
            return
    pytest.fail(f"{name}: changing it changes nothing in {', '.join(CONTEXTS)}: no template uses it")


def _lines() -> Iterator[tuple[int, tuple[str, ...], str]]:
    """(line number, key path, text after the colon) of every key in values.yaml."""
    stack: list[tuple[int, str]] = []
    for number, line in enumerate(VALUES_TEXT.splitlines()):
        match = re.match(r"^( *)([A-Za-z_][\w.-]*):(.*)$", line)
        if not match:
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match.group(2)))
        yield number, tuple(key for _, key in stack), match.group(3)


@pytest.mark.parametrize("path", list(SETTINGS), ids=IDS)
def test_every_value_says_what_it_does(path: tuple[str, ...]) -> None:
    lines = VALUES_TEXT.splitlines()
    (number,) = [n for n, found, _ in _lines() if found == path]
    above = lines[number - 1].strip() if number else ""
    assert above.startswith("#"), (
        f"values.yaml:{number + 1}: {'.'.join(path)} has no comment above it saying what it does"
    )


def _read_paths() -> Iterator[tuple[str, str]]:
    """(template, dotted path) of every .Values read, with $aliases of .Values paths resolved."""
    for template in sorted((CHART_DIR / "templates").iterdir()):
        text = template.read_text(encoding="utf-8")
        aliases = dict(re.findall(r"(\$\w+) :?= \.Values((?:\.\w+)+)", text))
        for path in re.findall(r"\.Values((?:\.\w+)+)", text):
            yield template.name, path[1:]
        for alias, base in aliases.items():
            for rest in re.findall(re.escape(alias) + r"((?:\.\w+)+)", text):
                yield template.name, f"{base[1:]}{rest}"


def _exists(dotted: str) -> bool:
    node: Any = VALUES
    for key in dotted.split("."):
        if not isinstance(node, dict):
            return True  # a free-form value (list, map) read further down
        if key not in node:
            return False
        node = node[key]
    return True


def test_templates_read_only_values_that_exist() -> None:
    reads = list(_read_paths())
    assert reads
    missing = sorted({f"{template}: .Values.{path}" for template, path in reads if not _exists(path)})
    assert not missing, f"templates read values that values.yaml does not have: {missing}"
