"""The CRDs survive the Argo CD Application that installed them, and with them every custom resource.

Covers: every generated CRD, and every CRD of the chart's crds/ (what Argo CD renders and manages
like any other resource), carries ``argocd.argoproj.io/sync-options`` with ``Delete=false`` (deleting
the Application, whose resources-finalizer cascades, leaves the CRD) and ``Prune=false`` (a CRD
dropped from Git is not pruned), in the comma-separated form Argo CD reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from lightning_op.api import kinds
from lightning_op.manifests import crds

CHART_CRDS = Path(__file__).resolve().parents[2] / "charts" / "lightning-op" / "crds"


def _sync_options(crd: dict[str, Any]) -> set[str]:
    value = crd["metadata"].get("annotations", {}).get("argocd.argoproj.io/sync-options", "")
    return {option.strip() for option in value.split(",") if option.strip()}


@pytest.mark.parametrize("info", kinds.KINDS, ids=[info.kind for info in kinds.KINDS])
def test_generated_crd_is_neither_deleted_nor_pruned(info: kinds.KindInfo) -> None:
    assert _sync_options(crds.build_crd(info)) >= {"Delete=false", "Prune=false"}


@pytest.mark.parametrize("info", kinds.KINDS, ids=[info.kind for info in kinds.KINDS])
def test_chart_crd_is_neither_deleted_nor_pruned(info: kinds.KindInfo) -> None:
    path = CHART_CRDS / crds.crd_filename(info)
    (crd,) = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    assert _sync_options(crd) >= {"Delete=false", "Prune=false"}
