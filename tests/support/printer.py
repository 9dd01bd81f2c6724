"""What ``kubectl get`` prints for our kinds: the checked-in CRDs' printer columns evaluated on an object.

The API server renders those columns itself (a Table) from each column's JSONPath; the emulator does
not, so tests evaluate them here on the objects the operator wrote, to show that every column a user
sees is filled. Only the JSONPath our columns use is understood: dotted fields and one
``[?(@.field=="value")]`` filter on a list.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import yaml

CRDS = Path(__file__).resolve().parents[2] / "crds"
_STEP = re.compile(r'\.([A-Za-z]\w*)(?:\[\?\(@\.(\w+)=="([^"]*)"\)\])?')


@cache
def columns(kind: str) -> tuple[tuple[str, str], ...]:
    """(name, jsonPath) of each printer column of ``kind``, in order."""
    for path in sorted(CRDS.glob("*.lightning-op.dev.yaml")):
        crd = yaml.safe_load(path.read_text())
        if crd["spec"]["names"]["kind"] == kind:
            (version,) = crd["spec"]["versions"]
            return tuple((c["name"], c["jsonPath"]) for c in version["additionalPrinterColumns"])
    raise KeyError(f"no CRD of kind {kind} in {CRDS}")


def evaluate(obj: Mapping[str, Any], json_path: str) -> Any:
    """The value at ``json_path`` in ``obj``, or None where it is missing (kubectl prints <none>)."""
    value: Any = obj
    consumed = 0
    for match in _STEP.finditer(json_path):
        assert match.start() == consumed, f"unsupported JSONPath {json_path!r}"
        consumed = match.end()
        field, key, wanted = match.groups()
        value = value.get(field) if isinstance(value, Mapping) else None
        if key is not None:
            items = value if isinstance(value, list) else []
            value = next(
                (item for item in items if isinstance(item, Mapping) and item.get(key) == wanted), None
            )
    assert consumed == len(json_path), f"unsupported JSONPath {json_path!r}"
    return value


def printed(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Column name -> value, as ``kubectl get -o wide`` shows ``obj`` (Age as its timestamp)."""
    return {name: evaluate(obj, path) for name, path in columns(str(obj["kind"]))}
