"""What ``lightning-op build-dataset`` leaves on disk, on a real SQLite store.

Covers: when the store refuses the dataset's record (a failing write, or another build that recorded
the same name meanwhile: ``ConflictError``) the command exits 1 with one line naming the record, and
no dataset file is left behind: neither a new one nor a change to an earlier good dataset of the same
name, which ``dataset-info`` still verifies; a retry then writes one pair of files. ``--output``
naming: a directory (existing, or a path ending in '/', created) gets ``NAME.jsonl`` and
``NAME.validation.jsonl``; a ``.jsonl`` path is the training file itself with
``<stem>.validation.jsonl`` beside it and ``--name`` naming only the record; anything else is a
one-line error; the record, the printed path and the files agree; a rebuild without a validation
split removes the earlier split's validation file rather than leaving it beside the new training file.

A read-only store file is the natural way to make the record's write fail, but the tests may run as
root, which SQLite lets write anyway; a trigger that aborts writes of dataset records fails the same
statement with a real SQLite error.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from support.dataset_cli import build_json, make_episode, run

from lightning_op.store import base as store_base
from lightning_op.store import sqlite as sqlite_store


def one_line_error(result: Result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.rstrip("\n").split("\n")
    assert len(lines) == 1, result.stderr
    return lines[0]


def files_under(directory: Path) -> dict[str, bytes]:
    """Every file below ``directory`` (hidden ones included) with its bytes."""
    if not directory.exists():
        return {}
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


@pytest.fixture
def seeded(store: store_base.EpisodeStore, store_url: str) -> str:
    store.insert_many([make_episode(n) for n in range(40)])
    return store_url


@pytest.fixture
def datasets_dir(tmp_path: Path) -> Path:
    return tmp_path / "datasets"


def freeze(tmp_path: Path) -> None:
    """Make the store abort every write of a dataset record."""
    with sqlite3.connect(tmp_path / "episodes.db") as db:
        for when in ("INSERT", "UPDATE"):
            db.execute(
                f"CREATE TRIGGER refuse_dataset_{when.lower()} BEFORE {when} ON records "
                "WHEN NEW.kind = 'dataset' BEGIN SELECT RAISE(ABORT, 'dataset records are frozen'); END"
            )


def unfreeze(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "episodes.db") as db:
        for when in ("insert", "update"):
            db.execute(f"DROP TRIGGER refuse_dataset_{when}")


# ------------------------------------------------------------------- the record cannot be saved


@pytest.mark.parametrize(
    "flags", [pytest.param(["--name", "orders-v1"], id="named"), pytest.param([], id="default-name")]
)
def test_a_refused_record_leaves_no_dataset_file(
    seeded: str, datasets_dir: Path, tmp_path: Path, flags: list[str]
) -> None:
    freeze(tmp_path)

    result = run(seeded, "build-dataset", "--agent-id", "bot", *flags)

    line = one_line_error(result)
    assert files_under(datasets_dir) == {}, "no file without a record pointing at it"
    assert not datasets_dir.exists(), "nor the directory the build made for them"
    assert "writing record dataset/" in line and "dataset records are frozen" in line
    assert "not saved" in line

    unfreeze(tmp_path)
    retried = build_json(seeded, *flags)
    assert sorted(files_under(datasets_dir)) == [
        f"{retried['name']}.jsonl",
        f"{retried['name']}.validation.jsonl",
    ]


def test_a_refused_rebuild_keeps_the_earlier_dataset(
    seeded: str, store: store_base.EpisodeStore, datasets_dir: Path, tmp_path: Path
) -> None:
    earlier = build_json(seeded, "--name", "orders-v1")
    before = files_under(datasets_dir)
    store.insert_many([make_episode(n) for n in range(100, 130)])
    freeze(tmp_path)

    line = one_line_error(run(seeded, "build-dataset", "--agent-id", "bot", "--name", "orders-v1"))

    assert "dataset/orders-v1" in line
    assert files_under(datasets_dir) == before, "the earlier files are untouched, and nothing was added"
    info = json.loads(run(seeded, "dataset-info", "--name", "orders-v1", "-o", "json").stdout)
    assert (info["verified"], info["sha256"], info["episodes"]) == (True, earlier["sha256"], 40)


def test_a_build_that_loses_a_race_for_its_name_keeps_the_winner(
    seeded: str,
    store: store_base.EpisodeStore,
    store_url: str,
    datasets_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another build-dataset records ``orders-v1`` while this one reads episodes: this one's record
    is a ``ConflictError`` and its files are dropped, so the winner's record and files still agree."""
    winner_dir = datasets_dir / "winner"
    winner: dict[str, Any] = {}
    read = sqlite_store.SQLiteStore.iter_json

    def read_then_lose_the_race(
        self: sqlite_store.SQLiteStore, *args: Any, **kwargs: Any
    ) -> Iterator[dict[str, Any]]:
        yield from read(self, *args, **kwargs)
        monkeypatch.setattr(sqlite_store.SQLiteStore, "iter_json", read)
        winner.update(build_json(store_url, "--name", "orders-v1", "--output", f"{winner_dir}/"))

    monkeypatch.setattr(sqlite_store.SQLiteStore, "iter_json", read_then_lose_the_race)

    line = one_line_error(run(seeded, "build-dataset", "--agent-id", "bot", "--name", "orders-v1"))

    assert "dataset/orders-v1" in line and "revision" in line
    assert sorted(files_under(datasets_dir)) == [
        "winner/orders-v1.jsonl",
        "winner/orders-v1.validation.jsonl",
    ]
    record = store.get_record("dataset", "orders-v1")
    assert record is not None and record.data["path"] == winner["path"] == str(winner_dir / "orders-v1.jsonl")


# --------------------------------------------------------------------------------- --output naming


@pytest.mark.parametrize(
    ("output", "train", "validation"),
    [
        pytest.param("out", "out/v2.jsonl", "out/v2.validation.jsonl", id="existing-directory"),
        pytest.param("new/", "new/v2.jsonl", "new/v2.validation.jsonl", id="trailing-slash-is-a-directory"),
        pytest.param(
            "deep/er/", "deep/er/v2.jsonl", "deep/er/v2.validation.jsonl", id="nested-new-directory"
        ),
        pytest.param("train.jsonl", "train.jsonl", "train.validation.jsonl", id="file"),
        pytest.param(
            "sub/train.jsonl", "sub/train.jsonl", "sub/train.validation.jsonl", id="file-new-directory"
        ),
    ],
)
def test_output_names_the_files_and_the_record_agrees(
    seeded: str, tmp_path: Path, output: str, train: str, validation: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    (work / "out").mkdir(parents=True)
    monkeypatch.chdir(work)

    printed = build_json(seeded, "--name", "v2", "--output", output)
    table = run(seeded, "build-dataset", "--agent-id", "bot", "--name", "v2", "--output", output)

    assert printed["name"] == "v2"
    assert (printed["path"], printed["validationPath"]) == (str(work / train), str(work / validation))
    assert sorted(files_under(work)) == sorted([train, validation])
    assert str(work / train) in table.stdout
    info = json.loads(run(seeded, "dataset-info", "--name", "v2", "-o", "json").stdout)
    assert (info["path"], info["validationPath"], info["verified"]) == (
        printed["path"],
        printed["validationPath"],
        True,
    )
    by_path = json.loads(run(seeded, "dataset-info", "--path", validation, "-o", "json").stdout)
    assert by_path["name"] == "v2"
    assert printed["sha256"] == hashlib.sha256((work / train).read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "output", [pytest.param("data", id="no-suffix"), pytest.param("data.txt", id="other-suffix")]
)
def test_output_that_is_neither_a_directory_nor_a_jsonl_file_is_refused(
    seeded: str, tmp_path: Path, output: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    line = one_line_error(run(seeded, "build-dataset", "--agent-id", "bot", "--output", output))

    assert f"--output {output!r}" in line and ".jsonl" in line and "'/'" in line
    assert not (tmp_path / output).exists()
    assert not list(tmp_path.glob("data*"))


def test_rebuild_without_a_split_removes_the_earlier_validation_file(seeded: str, tmp_path: Path) -> None:
    out = tmp_path / "custom" / "train.jsonl"
    build_json(seeded, "--output", str(out), "--name", "v1")

    again = build_json(seeded, "--output", str(out), "--name", "v1", "--validation-fraction", "0")

    assert again["validationPath"] is None
    assert sorted(files_under(tmp_path / "custom")) == ["train.jsonl"]


def test_help_says_how_output_is_read(store_url: str) -> None:
    text = " ".join(run(store_url, "build-dataset", "--help").stdout.split())

    assert "ending in '/'" in text
    assert "<stem>.validation.jsonl" in text
