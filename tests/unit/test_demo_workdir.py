"""``lightning-op demo --workdir DIR`` resets only a directory the demo made.

Covers: a directory holding someone's files is refused (exit 1, a message naming them) and left as
it was; a directory the demo made is reset: its store, datasets, training and logs go, the cached
base model stays, and a file someone put there since stays too; the workdir of a run from before the
marker existed (nothing but the demo's entries) is still accepted.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from lightning_op.cli import cli
from lightning_op.demo import run


def test_a_directory_of_someone_elses_files_is_refused_and_kept(tmp_path: Path) -> None:
    (tmp_path / "important").mkdir()
    (tmp_path / "important" / "thesis.tex").write_text("precious")
    (tmp_path / "notes.txt").write_text("precious")
    result = CliRunner().invoke(cli, ["demo", "--workdir", str(tmp_path), "--fast"])
    assert result.exit_code == 1
    assert "holds files the demo did not make (important, notes.txt)" in result.output
    assert (tmp_path / "important" / "thesis.tex").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["important", "notes.txt"]


def _fill(workdir: Path) -> None:
    for name in ("datasets", "training", "logs", "models"):
        (workdir / name).mkdir(parents=True)
        (workdir / name / "file").write_text("x")
    (workdir / "episodes.db").write_text("db")


def test_the_demos_own_directory_is_reset_keeping_the_base_model_and_other_files(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    run._prepare_workdir(workdir)  # new: made and marked
    assert (workdir / run.WORKDIR_MARKER).is_file()
    _fill(workdir)
    (workdir / "mine.txt").write_text("kept")
    run._prepare_workdir(workdir)
    assert sorted(p.name for p in workdir.iterdir()) == [run.WORKDIR_MARKER, "mine.txt", "models"]
    assert (workdir / "models" / "file").is_file()


def test_an_earlier_runs_directory_without_the_marker_is_accepted(tmp_path: Path) -> None:
    _fill(tmp_path)
    run._prepare_workdir(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [run.WORKDIR_MARKER, "models"]
    with pytest.raises(run.DemoError, match="thesis.tex"):
        (tmp_path / run.WORKDIR_MARKER).unlink()
        (tmp_path / "thesis.tex").write_text("x")
        run._prepare_workdir(tmp_path)
