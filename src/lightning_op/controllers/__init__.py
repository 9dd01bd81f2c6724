"""The kopf operator: one module per custom resource, plus ``common`` (settings, runtime, status helpers).

Importing this package registers every handler with kopf's default registry, so both
``lightning-op operator`` and ``kopf run -m lightning_op.controllers`` run the whole operator.
Each per-kind module is thin glue: parse the spec (``api``), call ``pipeline``/``manifests``, send
requests through ``k8s`` off the event loop, and write status through kopf's patch.
"""

from __future__ import annotations

import importlib

from lightning_op.controllers import capture, common, promotion

__all__ = ["capture", "common", "promotion"]

# Controllers written in parallel; a missing module must not stop the others from registering.
for _name in ("labeling", "finetune"):
    try:
        importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as _exc:
        if _exc.name != f"{__name__}.{_name}":
            raise
    else:
        __all__.append(_name)
