"""The chart ships exactly the generated CRDs, byte for byte.

Covers: charts/lightning-op/crds/ holds one file per generated CRD under crds/ (the same names, no
more, no fewer) with identical contents, and no other object kind (Helm installs everything under
crds/ before the templates, and never upgrades it, so nothing else belongs there); the CRDs Helm
loads from the chart are those four. The copies are files, not symlinks: Argo CD refuses symlinks
that leave the chart's directory and `helm package` would not follow them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

SYNC_HINT = "run `make crds`, then: cp crds/*.lightning-op.dev.yaml charts/lightning-op/crds/"


def _crd_files(directory: Path) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(directory.glob("*.yaml"))}


def test_same_files(repo_root: Path, chart_dir: Path) -> None:
    generated = {n for n in _crd_files(repo_root / "crds") if n != "rbac.yaml"}
    assert len(generated) == 4
    assert set(_crd_files(chart_dir / "crds")) == generated, SYNC_HINT


@pytest.mark.parametrize(
    "name",
    sorted(p.name for p in (Path(__file__).resolve().parents[2] / "crds").glob("*.lightning-op.dev.yaml")),
)
def test_identical_contents(repo_root: Path, chart_dir: Path, name: str) -> None:
    chart_copy = chart_dir / "crds" / name
    assert not chart_copy.is_symlink()
    assert chart_copy.read_text(encoding="utf-8") == (repo_root / "crds" / name).read_text(
        encoding="utf-8"
    ), f"charts/lightning-op/crds/{name} drifted from crds/{name}: {SYNC_HINT}"


def test_only_crds_under_crds(chart_dir: Path) -> None:
    for path in (chart_dir / "crds").iterdir():
        docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
        assert [d["kind"] for d in docs] == ["CustomResourceDefinition"], path.name


def test_helm_loads_the_four_crds(chart: Any, repo_root: Path) -> None:
    names = sorted(yaml.safe_load(c["data"])["metadata"]["name"] for c in chart.crds)
    assert names == sorted(
        n.removesuffix(".yaml") for n in _crd_files(repo_root / "crds") if n != "rbac.yaml"
    )
