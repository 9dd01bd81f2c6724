"""Building a dataset from episode dicts (``datasets.build``), without a store.

Covers: the reward filter, duplicates removed (first kept) and counted, the ``max_episodes`` cap over
distinct rows, a train/validation split that keeps each row on its side whatever else is built, the
sha256 and token figures against the bytes on disk, the statistics and their record round trip,
the content-addressed default name, the output validating clean, skipped episodes counted by reason,
and an empty result raising ``EmptyDatasetError`` and leaving no file behind. ``save_record`` sees
the final paths before the files appear under them; when it raises (a real SQLite store refusing the
record with ``ConflictError``) no file is left and an earlier dataset at the same paths is untouched.
Option errors name the field.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lightning_op.api import episode as ep
from lightning_op.datasets import build, validate
from lightning_op.store import base as store_base
from lightning_op.store import sqlite as sqlite_store


def episode(number: int, reward: float | None = 0.9, query: str | None = None) -> dict[str, Any]:
    return ep.Episode(
        agent_id="bot",
        session_id=f"s{number}",
        turn=0,
        state=ep.State(query=query or f"question number {number}"),
        action=ep.Action(tool="search", arguments={"q": f"item {number}"}),
        reward=reward,
        labeled=reward is not None,
    ).to_json_dict()


def built(tmp_path: Path, episodes: Iterable[dict[str, Any]], **options: Any) -> build.DatasetStats:
    return build.build_dataset(
        iter(episodes), build.BuildOptions(agent_id="bot", **options), output=tmp_path / "ds.jsonl"
    )


def lines(path: str | None) -> list[bytes]:
    return Path(path).read_bytes().splitlines() if path else []


def test_keeps_episodes_at_or_above_the_minimum_reward(tmp_path: Path) -> None:
    data = [episode(1, 0.69), episode(2, 0.7), episode(3, 1.0), episode(4, None)]

    stats = built(tmp_path, data, min_reward=0.7, validation_fraction=0.0)

    assert stats.episodes == 2
    assert (stats.min_reward, stats.max_reward, stats.avg_reward) == (0.7, 1.0, pytest.approx(0.85))
    assert all(b"question number 1" not in line for line in lines(stats.path))


def test_duplicates_are_removed_and_counted(tmp_path: Path) -> None:
    same = [episode(n, query="reset my password") for n in range(5)]
    for item in same:
        item["action"]["arguments"] = {"q": "reset"}

    stats = built(tmp_path, [*same, episode(9)], validation_fraction=0.0)

    assert stats.episodes == 2
    assert stats.duplicates_removed == 4
    assert len(lines(stats.path)) == 2


def test_max_episodes_caps_distinct_rows_oldest_first(tmp_path: Path) -> None:
    data = [episode(1), episode(1), episode(2), episode(3), episode(4)]

    stats = built(tmp_path, data, max_episodes=3, validation_fraction=0.0)

    assert stats.episodes == 3
    assert [b"number 3" in line for line in lines(stats.path)] == [False, False, True]


def test_split_keeps_each_row_on_its_side_whatever_else_is_built(tmp_path: Path) -> None:
    small = built(tmp_path / "a", [episode(n) for n in range(200)], validation_fraction=0.2)
    large = built(
        tmp_path / "b",
        [episode(n) for n in range(1000, 1300)] + [episode(n) for n in range(200)],
        validation_fraction=0.2,
    )

    small_validation = set(lines(small.validation_path))
    large_validation = set(lines(large.validation_path))
    assert 20 <= len(small_validation) <= 60, "about a fifth of 200 rows"
    assert small_validation <= large_validation
    assert not set(lines(small.path)) & large_validation
    assert small.train_episodes + small.validation_episodes == small.episodes == 200


def test_sha256_tokens_and_counts_match_the_bytes_written(tmp_path: Path) -> None:
    stats = built(tmp_path, [episode(n) for n in range(50)], validation_fraction=0.3)

    train_bytes = Path(stats.path).read_bytes()
    validation_bytes = Path(str(stats.validation_path)).read_bytes()
    assert stats.sha256 == hashlib.sha256(train_bytes).hexdigest()
    assert stats.validation_sha256 == hashlib.sha256(validation_bytes).hexdigest()
    assert (stats.bytes, stats.validation_bytes) == (len(train_bytes), len(validation_bytes))
    every_line = train_bytes.splitlines() + validation_bytes.splitlines()
    assert stats.tokens == sum((len(line) + 3) // 4 for line in every_line)
    assert stats.validation_path == str(tmp_path / "ds.validation.jsonl")


def test_output_passes_validation_and_is_chat_format(tmp_path: Path) -> None:
    stats = built(tmp_path, [episode(n) for n in range(20)], validation_fraction=0.0)

    assert validate.validate_dataset(stats.path).ok
    row = json.loads(lines(stats.path)[0])
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]


def test_stats_survive_the_store_record_round_trip(tmp_path: Path) -> None:
    stats = built(tmp_path, [episode(n) for n in range(10)])

    again = build.DatasetStats.from_json_dict(json.loads(json.dumps(stats.to_json_dict())))

    assert again == stats
    assert stats.to_json_dict()["settings"]["minReward"] == 0.7


def test_default_name_is_agent_and_content_hash(tmp_path: Path) -> None:
    data = [episode(n) for n in range(10)]
    first = build.build_dataset(iter(data), build.BuildOptions(agent_id="bot"), output_dir=tmp_path)
    second = build.build_dataset(iter(data), build.BuildOptions(agent_id="bot"), output_dir=tmp_path)

    assert first.name == second.name == f"bot-{first.sha256[:12]}"
    assert first.path == str(tmp_path / f"{first.name}.jsonl")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"{first.name}.jsonl",
        f"{first.name}.validation.jsonl",
    ]


def test_episodes_that_cannot_make_a_row_are_counted_by_reason(tmp_path: Path) -> None:
    broken = episode(2)
    broken["action"]["arguments"] = ["not", "an", "object"]

    stats = built(tmp_path, [episode(1), broken], validation_fraction=0.0)

    assert stats.episodes == 1
    assert stats.skipped == {"tool arguments are not a JSON object": 1}


def test_nothing_matching_raises_and_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(build.EmptyDatasetError, match=r"no episodes of agent bot with reward >= 0.7"):
        built(tmp_path, [episode(1, 0.2), episode(2, 0.5)])

    assert list(tmp_path.iterdir()) == []


def test_a_failing_source_leaves_no_partial_file(tmp_path: Path) -> None:
    def source() -> Iterator[dict[str, Any]]:
        yield episode(1)
        raise OSError("store went away")

    with pytest.raises(OSError, match="store went away"):
        built(tmp_path, source())

    assert list(tmp_path.iterdir()) == []


def test_progress_is_reported_while_reading(tmp_path: Path) -> None:
    seen: list[int] = []

    build.build_dataset(
        iter([episode(n) for n in range(25)]),
        build.BuildOptions(agent_id="bot"),
        output=tmp_path / "d.jsonl",
        on_progress=seen.append,
        progress_every=10,
    )

    assert seen == [10, 20, 25]


def test_the_record_is_saved_before_the_files_appear(tmp_path: Path) -> None:
    seen: list[tuple[str, str | None, list[str]]] = []

    def save_record(stats: build.DatasetStats) -> None:
        seen.append(
            (
                stats.path,
                stats.validation_path,
                sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")),
            )
        )

    stats = build.build_dataset(
        iter([episode(n) for n in range(40)]),
        build.BuildOptions(agent_id="bot", validation_fraction=0.3),
        output=tmp_path / "ds.jsonl",
        save_record=save_record,
    )

    assert seen == [(str(tmp_path / "ds.jsonl"), str(tmp_path / "ds.validation.jsonl"), [])]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds.jsonl", "ds.validation.jsonl"]
    assert stats.path == seen[0][0]


def test_a_record_the_store_refuses_leaves_no_file(tmp_path: Path) -> None:
    store = sqlite_store.SQLiteStore(tmp_path / "episodes.db")
    store.put_record(build.RECORD_KIND, "ds", {"built": "elsewhere"})
    out = tmp_path / "out"

    def save_record(stats: build.DatasetStats) -> None:
        store.put_record(build.RECORD_KIND, stats.name, stats.to_json_dict(), expected_revision=0)

    with pytest.raises(store_base.ConflictError, match="record dataset/ds is at revision 1"):
        build.build_dataset(
            iter([episode(n) for n in range(40)]),
            build.BuildOptions(agent_id="bot"),
            output_dir=out,
            name="ds",
            save_record=save_record,
        )

    store.close()
    assert not out.exists(), "neither the files nor the directory made for them"


def test_a_refused_rebuild_keeps_the_earlier_dataset(tmp_path: Path) -> None:
    store = sqlite_store.SQLiteStore(tmp_path / "episodes.db")
    out = tmp_path / "out"
    earlier = build.build_dataset(
        iter([episode(n) for n in range(40)]),
        build.BuildOptions(agent_id="bot"),
        output_dir=out,
        name="ds",
        save_record=lambda stats: store.put_record(build.RECORD_KIND, stats.name, stats.to_json_dict()),
    )
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    with pytest.raises(store_base.ConflictError):
        build.build_dataset(
            iter([episode(n) for n in range(80)]),
            build.BuildOptions(agent_id="bot"),
            output_dir=out,
            name="ds",
            save_record=lambda stats: store.put_record(
                build.RECORD_KIND, stats.name, stats.to_json_dict(), expected_revision=0
            ),
        )

    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    record = store.get_record(build.RECORD_KIND, "ds")
    store.close()
    assert record is not None and build.DatasetStats.from_json_dict(record.data) == earlier
    assert validate.verify_files(earlier) == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param({"min_reward": 1.5}, "minimum reward 1.5 is outside 0..1", id="min-reward"),
        pytest.param({"validation_fraction": 1.0}, "validation fraction 1.0 must be", id="fraction"),
        pytest.param({"max_episodes": 0}, "max episodes 0 must be at least 1", id="max-episodes"),
        pytest.param({"output_format": "parquet"}, "'parquet' is not supported: use jsonl", id="format"),
    ],
)
def test_bad_options_name_the_field(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build.BuildOptions(agent_id="bot", **options)
