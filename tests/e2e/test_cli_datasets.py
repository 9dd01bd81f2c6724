"""``lightning-op build-dataset`` and ``dataset-info`` on a real SQLite store.

Covers: a build writes chat-format JSONL next to the store (or to ``--output``), prints its figures
(``-o json`` one object), removes duplicates, keeps only rewards >= ``--min-reward``, respects
``--max-episodes`` and ``--system-prompt``, records a sha256 equal to the file's bytes, splits
train/validation the same way on every rebuild; ``dataset-info --name`` reads the record back and
warns when the file changed (exit 1); ``dataset-info --path`` reports a foreign file's bad lines by
number (exit 1); start-training refuses a dataset changed since it was built and a training file
with bad lines (naming them) before it records a job; no matching episodes and bad flags are one-
line errors with a non-zero exit; personal data planted in episodes is in neither the dataset nor
the output.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import Result
from support.dataset_cli import build_json, make_episode, run

from lightning_op.api import episode as ep
from lightning_op.pipeline import training
from lightning_op.store import base as store_base

EMAIL = "jane.doe@example.com"


def assert_one_line_error(result: Result, *needles: str) -> None:
    assert result.exit_code != 0
    lines = result.stderr.rstrip("\n").split("\n")
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0]


@pytest.fixture
def seeded(store: store_base.EpisodeStore, store_url: str) -> str:
    good = [make_episode(n, 0.9) for n in range(40)]
    duplicates = [make_episode(100 + n, 0.8, query="where is order 1?") for n in range(3)]
    for item in duplicates:
        assert item.action is not None
        item.action.arguments = {"order": 1}
    poor = [make_episode(200 + n, 0.3) for n in range(10)]
    store.insert_many([*good, *duplicates, *poor, make_episode(300, 1.0, agent="other")])
    return store_url


def test_build_writes_jsonl_next_to_the_store_and_prints_stats(seeded: str, tmp_path: Path) -> None:
    stats = build_json(seeded, "--name", "orders-v1")

    path = Path(str(stats["path"]))
    assert path == tmp_path / "datasets" / "orders-v1.jsonl"
    assert stats["episodes"] == 40, "40 good episodes; 3 duplicates of one of them; 10 below 0.7"
    assert stats["duplicatesRemoved"] == 3
    assert (stats["minReward"], stats["maxReward"]) == (0.9, 0.9), (
        "the oldest copy (0.9) is kept, not the 0.8 ones"
    )
    assert stats["trainEpisodes"] + stats["validationEpisodes"] == 40  # type: ignore[operator]
    assert stats["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    validation = Path(str(stats["validationPath"]))
    assert stats["validationSha256"] == hashlib.sha256(validation.read_bytes()).hexdigest()
    assert stats["tokens"] > 0  # type: ignore[operator]
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == stats["trainEpisodes"]
    assert all(row["messages"][-1]["tool_calls"][0]["function"]["name"] == "lookup_order" for row in rows)


@pytest.mark.parametrize(
    ("flags", "warned"),
    [
        pytest.param(["--max-episodes", "1"], True, id="one-episode-no-validation-row"),
        pytest.param(["--max-episodes", "1", "--validation-fraction", "0"], False, id="asked-for-none"),
        pytest.param([], False, id="forty-episodes-have-a-split"),
    ],
)
def test_build_warns_when_the_validation_split_comes_out_empty(
    seeded: str, flags: list[str], warned: bool
) -> None:
    result = run(seeded, "build-dataset", "--agent-id", "bot", *flags)
    assert result.exit_code == 0, result.output
    assert ("warning: no held-out split" in result.stderr) is warned, result.stderr
    if warned:
        assert "1 episode at --validation-fraction 0.1" in result.stderr


def test_build_table_names_the_file_and_fingerprint(seeded: str) -> None:
    result = run(seeded, "build-dataset", "--agent-id", "bot", "--name", "orders-v1")

    assert result.exit_code == 0, result.output
    assert "orders-v1.jsonl" in result.stdout
    stats = json.loads(run(seeded, "dataset-info", "--name", "orders-v1", "-o", "json").stdout)
    assert stats["sha256"] in result.stdout
    assert "40" in result.stdout


def test_build_options_shape_the_rows(seeded: str, tmp_path: Path) -> None:
    out = tmp_path / "custom" / "train.jsonl"

    stats = build_json(
        seeded,
        "--output",
        str(out),
        "--max-episodes",
        "5",
        "--validation-fraction",
        "0",
        "--system-prompt",
        "You route orders.",
        "--min-reward",
        "0.3",
    )

    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert stats["path"] == str(out)
    assert stats["validationPath"] is None
    assert len(rows) == 5
    assert {row["messages"][0]["content"] for row in rows} == {"You route orders."}
    assert [row["messages"][1]["content"] for row in rows] == [f"where is order {n}?" for n in range(5)]


def test_output_directory_gets_the_named_file(seeded: str, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()

    stats = build_json(seeded, "--output", str(tmp_path / "out"), "--name", "v2")

    assert stats["path"] == str(tmp_path / "out" / "v2.jsonl")
    assert stats["validationPath"] == str(tmp_path / "out" / "v2.validation.jsonl")


def test_rebuild_is_byte_identical_and_the_split_is_stable(
    seeded: str, store: store_base.EpisodeStore
) -> None:
    first = build_json(seeded, "--name", "a", "--validation-fraction", "0.3")
    again = build_json(seeded, "--name", "b", "--validation-fraction", "0.3")
    store.insert_many([make_episode(n, 0.95) for n in range(500, 560)])
    grown = build_json(seeded, "--name", "c", "--validation-fraction", "0.3")

    assert first["sha256"] == again["sha256"]
    assert first["validationSha256"] == again["validationSha256"]
    validation_before = set(Path(str(first["validationPath"])).read_text().splitlines())
    validation_after = set(Path(str(grown["validationPath"])).read_text().splitlines())
    train_after = set(Path(str(grown["path"])).read_text().splitlines())
    assert validation_before and validation_before <= validation_after
    assert not validation_before & train_after


def test_dataset_info_reads_the_record_and_verifies_the_file(seeded: str) -> None:
    built = build_json(seeded, "--name", "orders-v1")

    info = json.loads(run(seeded, "dataset-info", "--name", "orders-v1", "-o", "json").stdout)
    table = run(seeded, "dataset-info", "--name", "orders-v1")

    for key in ("episodes", "avgReward", "minReward", "maxReward", "tokens", "sha256", "path", "created"):
        assert info[key] == built[key]
    assert info["verified"] is True
    assert table.exit_code == 0 and table.stderr == ""
    assert "files match their sha256" in table.stdout


def test_dataset_info_warns_when_the_file_changed(seeded: str) -> None:
    built = build_json(seeded, "--name", "orders-v1")
    with open(str(built["path"]), "a") as handle:
        handle.write('{"messages": []}\n')

    result = run(seeded, "dataset-info", "--name", "orders-v1", "-o", "json")

    assert result.exit_code == 1, "a failed check is exit 1, after printing"
    assert json.loads(result.stdout)["verified"] is False
    assert "changed since it was built" in result.stderr
    assert "rebuild" in result.stderr


def _base_model(tmp_path: Path) -> Path:
    """A directory start-training takes for a model (its checks stop before loading one)."""
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    return base


def test_start_training_refuses_a_dataset_changed_since_it_was_built(
    seeded: str, tmp_path: Path, store: store_base.EpisodeStore
) -> None:
    """The job would train on other rows than its record (and the sha256 it keeps) says."""
    built = build_json(seeded, "--name", "orders-v1")
    with open(str(built["path"]), "a") as handle:
        handle.write('{"messages": [{"role": "user", "content": "new"}]}\n')
    args = ["--dataset", "orders-v1", "--base-model", str(_base_model(tmp_path)), "--no-wait"]
    result = run(seeded, "start-training", *args)
    assert_one_line_error(result, "changed since it was built", "rebuild it with build-dataset")
    assert store.list_records(training.RECORD_KIND) == [], "no job was recorded"


def test_start_training_refuses_a_dataset_whose_file_is_gone(
    seeded: str, tmp_path: Path, store: store_base.EpisodeStore
) -> None:
    built = build_json(seeded, "--name", "orders-v1")
    Path(str(built["path"])).unlink()
    args = ["--dataset", "orders-v1", "--base-model", str(_base_model(tmp_path)), "--no-wait"]
    result = run(seeded, "start-training", *args)
    assert_one_line_error(
        result, "dataset 'orders-v1'", "No such file or directory", "rebuild it with build-dataset"
    )
    assert store.list_records(training.RECORD_KIND) == [], "no job was recorded"


def test_start_training_refuses_a_train_file_with_bad_lines_naming_them(
    seeded: str, tmp_path: Path, store: store_base.EpisodeStore
) -> None:
    bad = tmp_path / "bad.jsonl"
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]}
    bad.write_text(json.dumps(good) + "\nnot json\n")
    args = ["--train-file", str(bad), "--base-model", str(_base_model(tmp_path)), "--no-wait"]
    result = run(seeded, "start-training", *args)
    assert_one_line_error(result, "training file", "1 bad lines of 2", "line 2")
    assert store.list_records(training.RECORD_KIND) == [], "no job was recorded"


def test_dataset_info_by_path_finds_the_record(seeded: str) -> None:
    built = build_json(seeded, "--name", "orders-v1")

    info = json.loads(run(seeded, "dataset-info", "--path", str(built["path"]), "-o", "json").stdout)

    assert (info["name"], info["verified"]) == ("orders-v1", True)


def test_dataset_info_on_a_foreign_file_reports_bad_lines(store_url: str, tmp_path: Path) -> None:
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    path = tmp_path / "mine.jsonl"
    path.write_text(
        f"{json.dumps(good)}\nnot json\n{json.dumps({'messages': [{'role': 'user', 'content': 'x'}]})}\n"
    )

    result = run(store_url, "dataset-info", "--path", str(path), "-o", "json")

    assert result.exit_code == 1
    info = json.loads(result.stdout)
    assert (info["episodes"], info["valid"], info["errorCount"]) == (1, False, 2)
    assert [e["line"] for e in info["errors"]] == [2, 3]
    assert "assistant turn missing" in info["errors"][1]["message"]
    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert "line 2: not JSON" in result.stderr


def test_no_matching_episodes_says_how_many_are_labeled(seeded: str) -> None:
    result = run(seeded, "build-dataset", "--agent-id", "bot", "--min-reward", "0.95")

    assert_one_line_error(
        result, "no episodes of agent bot with reward >= 0.95 (53 labeled, best 0.9): lower --min-reward"
    )


def test_agent_without_labels_is_told_to_label_first(store: store_base.EpisodeStore, store_url: str) -> None:
    store.insert_many([ep.Episode(agent_id="fresh", state=ep.State(query="hi"))])

    result = run(store_url, "build-dataset", "--agent-id", "fresh")

    assert_one_line_error(result, "no episodes of agent fresh with reward >= 0.7 (1 episodes, none labeled)")


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        pytest.param(
            ["--output-format", "parquet"],
            "--output-format 'parquet' is not supported: use jsonl",
            id="format",
        ),
        pytest.param(["--min-reward", "2"], "--min-reward 2 is outside 0..1", id="min-reward"),
        pytest.param(["--validation-fraction", "1"], "--validation-fraction must be below 1", id="fraction"),
        pytest.param(["--max-episodes", "0"], "--max-episodes must be at least 1", id="max-episodes"),
        pytest.param(["--name", "../escape"], "dataset name '../escape' is not allowed", id="name"),
        pytest.param(["--since", "last week"], "--since 'last week' is not a time", id="since"),
    ],
)
def test_build_bad_flags_are_one_line_errors(seeded: str, flags: list[str], needle: str) -> None:
    assert_one_line_error(run(seeded, "build-dataset", "--agent-id", "bot", *flags), needle)


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        pytest.param([], "give exactly one of --name", id="neither"),
        pytest.param(["--name", "x", "--path", "y"], "give exactly one of --name", id="both"),
        pytest.param(["--name", "missing"], "dataset missing not found", id="unknown-name"),
        pytest.param(["--path", "/nonexistent/data.jsonl"], "is not a file", id="missing-file"),
    ],
)
def test_dataset_info_bad_input_is_one_line_error(
    store: store_base.EpisodeStore, store_url: str, flags: list[str], needle: str
) -> None:
    assert_one_line_error(run(store_url, "dataset-info", *flags), needle)


def test_personal_data_is_in_neither_the_dataset_nor_the_output(
    store: store_base.EpisodeStore, store_url: str
) -> None:
    store.insert_many([make_episode(n, 0.9, query=f"mail {EMAIL} about order {n}") for n in range(5)])

    result = run(store_url, "build-dataset", "--agent-id", "bot", "--name", "pii", "-o", "json")
    table = run(store_url, "build-dataset", "--agent-id", "bot", "--name", "pii")
    stats = json.loads(result.stdout)
    written = Path(stats["path"]).read_text() + Path(stats["validationPath"] or stats["path"]).read_text()

    assert EMAIL not in written and "example.com" not in written
    assert "[REDACTED:email]" in written
    assert EMAIL not in result.output + table.output
