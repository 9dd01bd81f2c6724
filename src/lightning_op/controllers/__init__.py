"""The kopf operator: one module per custom resource, plus ``common`` (settings, runtime, status helpers).

Importing this package registers every handler with kopf's default registry, so both
``lightning-op operator`` and ``kopf run -m lightning_op.controllers`` run the whole operator.
``LIGHTNING_CONTROLLERS`` (comma-separated: ``capture,labeling,finetune,promotion``) registers only
some of them, e.g. to split the kinds over two deployments or to test one controller alone.
Each per-kind module is thin glue: parse the spec (``api``), call ``pipeline``/``manifests``, send
requests through ``k8s`` off the event loop, and write status through kopf's patch.
"""

from __future__ import annotations

import importlib
import os

from lightning_op.controllers import common

ENV_CONTROLLERS = "LIGHTNING_CONTROLLERS"
ALL_CONTROLLERS = ("capture", "labeling", "finetune", "promotion")


def _selected() -> list[str]:
    raw = os.environ.get(ENV_CONTROLLERS, "").strip()
    if not raw:
        return list(ALL_CONTROLLERS)
    names = [name.strip() for name in raw.split(",") if name.strip()]
    unknown = sorted(set(names) - set(ALL_CONTROLLERS))
    if unknown:
        choices = list(ALL_CONTROLLERS)
        raise ValueError(f"{ENV_CONTROLLERS}: unknown controllers {unknown}; choose from {choices}")
    return names


__all__ = ["common"]
for _name in _selected():
    importlib.import_module(f"{__name__}.{_name}")
    __all__.append(_name)
