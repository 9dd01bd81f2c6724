"""The checked-in crds/ files are exactly what `lightning-op crds` generates from the models.

Covers: every generated file exists under crds/ with identical content (run `make crds` when this
fails); no stale files linger there; generation is deterministic; `lightning-op crds` prints the four
CRDs (and the RBAC with --rbac) and `--output-dir` writes the same files as the checked-in ones.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from lightning_op.cli import cli
from lightning_op.manifests import crds

REPO = Path(__file__).resolve().parents[2]
CRDS_DIR = REPO / "crds"
GENERATED = crds.render_files()


@pytest.mark.parametrize("name", sorted(GENERATED), ids=sorted(GENERATED))
def test_checked_in_file_equals_generated(name: str) -> None:
    path = CRDS_DIR / name
    assert path.exists(), f"crds/{name} is missing: run `make crds` and commit the result"
    assert path.read_text(encoding="utf-8") == GENERATED[name], (
        f"crds/{name} differs from the models in src/lightning_op/api: run `make crds` and commit the result"
    )


def test_no_stale_files_in_crds_dir() -> None:
    stale = sorted(p.name for p in CRDS_DIR.glob("*.yaml") if p.name not in GENERATED)
    assert not stale, (
        f"crds/ has files the generator no longer writes: {stale}; delete them and run `make crds`"
    )


def test_generation_is_deterministic() -> None:
    assert crds.render_files() == GENERATED


def test_cli_prints_the_four_crds() -> None:
    result = CliRunner().invoke(cli, ["crds"])
    assert result.exit_code == 0, result.output
    docs = [d for d in yaml.safe_load_all(result.output) if d]
    assert [d["kind"] for d in docs] == ["CustomResourceDefinition"] * 4
    assert [d["spec"]["names"]["kind"] for d in docs] == [
        "EpisodeCapture",
        "RewardLabeling",
        "FineTuneJob",
        "ModelPromotion",
    ]


def test_cli_prints_rbac_when_asked() -> None:
    result = CliRunner().invoke(cli, ["crds", "--rbac"])
    assert result.exit_code == 0, result.output
    docs = [d for d in yaml.safe_load_all(result.output) if d]
    assert [d["kind"] for d in docs][4:] == ["ClusterRole"] * 3
    assert docs[4]["metadata"]["name"] == "lightning-op"


def test_cli_output_dir_writes_the_checked_in_files(tmp_path: Path) -> None:
    out = tmp_path / "crds"
    result = CliRunner().invoke(cli, ["crds", "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    written = {p.name: p.read_text(encoding="utf-8") for p in out.iterdir()}
    assert written == GENERATED
