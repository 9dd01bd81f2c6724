"""``lightning-op list-episodes`` and ``label-episode`` on a real SQLite store.

Covers: the ``-o json`` shapes scripts rely on (an array with id, agentId, reward, labeled; one object
for a label), newest first with ``--limit``, the agent/labeled/unlabeled/model-version filters, the
table a person reads, labeling by hand (manual grader, reward and labeled updated, visible to
``--labeled-only``), one-line errors with a non-zero exit for bad input and unknown ids, personal data
planted in episodes never appearing in any output, and the installed ``lightning-op`` entry point.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from lightning_op import cli
from lightning_op.api import episode as ep
from lightning_op.store import base as store_base

T0 = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
EMAIL = "jane.doe@example.com"
PHONE = "+44 20 7946 0958"


def make_episode(
    number: int, *, agent: str = "bot", reward: float | None = None, **fields: object
) -> ep.Episode:
    data: dict[str, object] = {
        "agent_id": agent,
        "session_id": f"s-{number}",
        "turn": 0,
        "timestamp": T0 + timedelta(minutes=number),
        "model_version": "base-v1",
        "state": {"query": f"where is my order {number}?"},
        "action": {"tool": "lookup_order", "arguments": {"order": number}},
    }
    data.update(fields)
    episode = ep.Episode.model_validate(data)
    if reward is not None:
        episode.reward = reward
        episode.labeled = True
        episode.labels = [ep.Label(score=reward, grader="rule")]
    return episode


def run(store_url: str, *args: str) -> Result:
    return CliRunner(env={"COLUMNS": "200"}).invoke(
        cli.cli, [args[0], "--store", store_url, *args[1:]], catch_exceptions=False
    )


def assert_one_line_error(result: Result, *needles: str) -> None:
    assert result.exit_code != 0
    lines = result.stderr.rstrip("\n").split("\n")
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0]


@pytest.fixture
def seeded(store: store_base.EpisodeStore, store_url: str) -> str:
    store.insert_many([make_episode(n, reward=0.9 if n % 2 else None) for n in range(1, 7)])
    store.insert_many([make_episode(100, agent="other", model_version="tuned-v2")])
    return store_url


def test_list_json_is_an_array_of_episodes_newest_first(seeded: str) -> None:
    result = run(seeded, "list-episodes", "--agent-id", "bot", "-o", "json")

    assert result.exit_code == 0, result.output
    episodes = json.loads(result.stdout)
    assert [e["sessionId"] for e in episodes] == [f"s-{n}" for n in range(6, 0, -1)]
    for item in episodes:
        assert {"id", "agentId", "reward", "labeled"} <= item.keys()
        assert item["agentId"] == "bot"
    assert [e["labeled"] for e in episodes] == [False, True] * 3
    assert [e["reward"] for e in episodes] == [None, 0.9] * 3


@pytest.mark.parametrize(
    ("flags", "sessions"),
    [
        pytest.param(["--limit", "2"], ["s-6", "s-5"], id="limit"),
        pytest.param(["--labeled-only"], ["s-5", "s-3", "s-1"], id="labeled-only"),
        pytest.param(["--unlabeled-only", "--limit", "2"], ["s-6", "s-4"], id="unlabeled-only"),
        pytest.param(["--since", (T0 + timedelta(minutes=5)).isoformat()], ["s-6", "s-5"], id="since"),
    ],
)
def test_list_filters(seeded: str, flags: list[str], sessions: list[str]) -> None:
    result = run(seeded, "list-episodes", "--agent-id", "bot", *flags, "-o", "json")

    assert result.exit_code == 0, result.output
    assert [e["sessionId"] for e in json.loads(result.stdout)] == sessions


def test_list_without_agent_and_by_model_version(seeded: str) -> None:
    everything = json.loads(run(seeded, "list-episodes", "-o", "json").stdout)
    tuned = json.loads(run(seeded, "list-episodes", "--model-version", "tuned-v2", "-o", "json").stdout)

    assert {e["agentId"] for e in everything} == {"bot", "other"}
    assert [e["agentId"] for e in tuned] == ["other"]


def test_list_table_shows_id_time_query_tool_reward(seeded: str) -> None:
    result = run(seeded, "list-episodes", "--agent-id", "bot", "--limit", "2")

    assert result.exit_code == 0, result.output
    for header in ("id", "time", "query", "tool", "reward"):
        assert header in result.stdout
    assert "where is my order 6?" in result.stdout
    assert "lookup_order" in result.stdout
    assert "0.90" in result.stdout
    assert "2026-01-10 12:06:00" in result.stdout


def test_list_table_keeps_each_id_whole_on_a_narrow_terminal(
    seeded: str, store: store_base.EpisodeStore
) -> None:
    """The id is what a user copies into ``label-episode --episode-id``: at 80 columns it is never
    wrapped (the other columns fold instead)."""
    result = CliRunner(env={"COLUMNS": "80"}).invoke(
        cli.cli, ["list-episodes", "--store", seeded, "--agent-id", "bot"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    ids = [e.id for e in store.iter_episodes(store_base.EpisodeQuery(agent_id="bot"))]
    assert len(ids) == 6
    for episode_id in ids:
        assert any(episode_id in line for line in result.stdout.splitlines()), (episode_id, result.stdout)


def test_list_of_an_agent_without_episodes(seeded: str) -> None:
    assert json.loads(run(seeded, "list-episodes", "--agent-id", "nobody", "-o", "json").stdout) == []
    assert "no episodes match" in run(seeded, "list-episodes", "--agent-id", "nobody").stdout


@pytest.mark.parametrize(
    ("flags", "needles"),
    [
        pytest.param(
            ["--labeled-only", "--unlabeled-only"], ["--unlabeled-only", "--labeled-only"], id="both-filters"
        ),
        pytest.param(["--limit", "0"], ["--limit must be at least 1"], id="limit-zero"),
        pytest.param(["--limit", "lots"], ["--limit 'lots' is not a whole number"], id="limit-text"),
        pytest.param(["--since", "yesterday"], ["--since 'yesterday' is not a time"], id="since-text"),
    ],
)
def test_list_bad_input_is_one_line_error(seeded: str, flags: list[str], needles: list[str]) -> None:
    assert_one_line_error(run(seeded, "list-episodes", *flags), *needles)


def test_label_sets_manual_reward_and_prints_the_episode(seeded: str, store: store_base.EpisodeStore) -> None:
    target = make_episode(6).id

    result = run(
        seeded,
        "label-episode",
        "--episode-id",
        target,
        "--reward",
        "0.25",
        "--reason",
        "wrong order",
        "-o",
        "json",
    )

    assert result.exit_code == 0, result.output
    labeled = json.loads(result.stdout)
    assert isinstance(labeled, dict)
    assert (labeled["id"], labeled["reward"], labeled["labeled"]) == (target, 0.25, True)
    assert labeled["labels"][-1]["grader"] == "manual"
    assert labeled["labels"][-1]["reason"] == "wrong order"
    stored = store.get(target)
    assert stored is not None and stored.reward == 0.25
    listed = json.loads(
        run(seeded, "list-episodes", "--agent-id", "bot", "--labeled-only", "-o", "json").stdout
    )
    assert target in [e["id"] for e in listed]


def test_manual_label_wins_over_a_grader_label(seeded: str) -> None:
    target = make_episode(5).id  # labeled 0.9 by the rule grader

    result = run(seeded, "label-episode", "--episode-id", target, "--reward", "0")

    assert result.exit_code == 0, result.output
    assert "0.00" in result.stdout
    (listed,) = [
        e for e in json.loads(run(seeded, "list-episodes", "-o", "json").stdout) if e["id"] == target
    ]
    assert listed["reward"] == 0.0


@pytest.mark.parametrize(
    ("reward", "needle"),
    [
        pytest.param("1.5", "--reward 1.5 is outside 0..1", id="above-one"),
        pytest.param("-0.1", "--reward -0.1 is outside 0..1", id="negative"),
        pytest.param("nan", "--reward nan is outside 0..1", id="nan"),
        pytest.param("good", "--reward 'good' is not a number", id="text"),
    ],
)
def test_label_reward_out_of_range_is_one_line_error(seeded: str, reward: str, needle: str) -> None:
    result = run(seeded, "label-episode", "--episode-id", make_episode(6).id, "--reward", reward)

    assert_one_line_error(result, needle)


def test_label_unknown_episode_is_one_line_error(seeded: str) -> None:
    result = run(seeded, "label-episode", "--episode-id", "ep-missing", "--reward", "1")

    assert_one_line_error(result, "episode ep-missing not found")


def test_personal_data_never_appears_in_output(store: store_base.EpisodeStore, store_url: str) -> None:
    planted = make_episode(
        1,
        state={"query": f"email me at {EMAIL} or call {PHONE}"},
        action={"tool": "send_email", "arguments": {"to": EMAIL}},
    )
    store.insert_many([planted])
    (stored,) = json.loads(run(store_url, "list-episodes", "-o", "json").stdout)

    outputs = [
        run(store_url, "list-episodes").output,
        json.dumps(stored),
        run(
            store_url,
            "label-episode",
            "--episode-id",
            stored["id"],
            "--reward",
            "1",
            "--reason",
            f"customer {EMAIL} was happy",
        ).output,
        run(store_url, "label-episode", "--episode-id", stored["id"], "--reward", "1", "-o", "json").output,
    ]

    for output in outputs:
        assert EMAIL not in output
        assert PHONE not in output
        assert "example.com" not in output
    assert "[REDACTED:email]" in outputs[1]


def test_installed_entry_point_prints_json(seeded: str, tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "lightning-op"
    env = {**os.environ, "LIGHTNING_STORE": seeded}

    done = subprocess.run(
        [str(exe), "list-episodes", "--agent-id", "bot", "--limit", "3", "-o", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    bad = subprocess.run(
        [str(exe), "label-episode", "--episode-id", "nope", "--reward", "7"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)) == 3
    assert bad.returncode != 0
    assert bad.stderr.strip().splitlines() == [
        "error: --reward 7 is outside 0..1: give a reward between 0 (bad) and 1 (perfect)"
    ]
