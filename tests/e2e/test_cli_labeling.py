"""``lightning-op test-grader``, ``label-batch`` and ``dry-run`` on a real SQLite store.

Covers: the sample test's table (record, score, notes) and average, and its JSON object; label-batch
with a preset and with an LLM judge spec file (over HTTP, through the openai SDK, against the fake
judge) under a 429/500 storm and junk replies: every episode labeled or marked failed, none twice; a
judge that is down stops the run with nothing recorded, however often it is rerun, and gives a dry
run no verdict; the
summary figures; a rerun labels nothing new; the dry run's one JSON object with the contract keys and a
verdict, its table with the verdict and diagnosis, ``--ranges`` and ``--fail-on``; one-line errors with
exit 1 for a bad grader file (naming the field), a missing file, conflicting or missing grader flags,
an unknown preset and bad numbers. The installed entry point against the judge started as a process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from lightning_op import cli
from lightning_op.api import episode as ep
from lightning_op.pipeline import labeling
from lightning_op.store import base as store_base
from lightning_op.testing import judge_server as js

T0 = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
TOOLS = ["get_weather", "search_docs", "lookup_order", "send_email"]
CONTRACT_KEYS = {"mean", "std", "fractionAboveZero", "fractionPerfect", "verdict", "diagnosis", "count"}


def make_episodes(count: int, *, agent: str = "bot", wrong_every: int = 3) -> list[ep.Episode]:
    episodes = []
    for i in range(count):
        expected = TOOLS[i % len(TOOLS)]
        chosen = TOOLS[(i + 1) % len(TOOLS)] if i % wrong_every == 0 else expected
        mark = " JUNK" if i % 10 == 7 else ""
        episodes.append(
            ep.Episode(
                agent_id=agent,
                session_id=f"s-{i}",
                turn=0,
                timestamp=T0 + timedelta(seconds=i),
                state=ep.State(query=f"question {i}{mark}", context={"expected_tool": expected}),
                action=ep.Action(tool=chosen, arguments={"n": i}),
            )
        )
    return episodes


def run(store_url: str, *args: str) -> Result:
    return CliRunner(env={"COLUMNS": "200"}).invoke(
        cli.cli, [args[0], "--store", store_url, *args[1:]], catch_exceptions=False
    )


def assert_one_line_error(result: Result, *needles: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.stderr.rstrip("\n").split("\n")
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def judge_rule() -> js.FaultRule:
    """JUNK queries always get junk; every other prompt gets two 429s, then its score."""
    attempts: dict[str, int] = {}

    def rule(request: js.JudgeRequest) -> js.Fault | None:
        if "JUNK" in request.prompt:
            return js.Fault.JUNK
        attempts[request.prompt] = attempts.get(request.prompt, 0) + 1
        return js.Fault.RATE_LIMIT if attempts[request.prompt] <= 2 else None

    return rule


def judge_file(tmp_path: Path, base_url: str) -> Path:
    path = tmp_path / "judge.yaml"
    path.write_text(
        "type: score_model\n"
        "name: helpfulness\n"
        "model: judge-test\n"
        f"base_url: {base_url}\n"
        "range: [0, 10]\n"
        "input:\n"
        "  - role: system\n"
        "    content: Rate how well the agent picked its tool.\n"
        "  - role: user\n"
        '    content: "Query: {{episode.state.query}} Agent: {{sample.output_text}}"\n',
        encoding="utf-8",
    )
    return path


@pytest.fixture
def seeded(store: store_base.EpisodeStore, store_url: str) -> str:
    store.insert_many(make_episodes(40))
    return store_url


@pytest.fixture
def judge_url() -> Iterator[tuple[js.JudgeServer, str]]:
    server = js.JudgeServer(faults=js.Faults(rule=judge_rule(), retry_after_s=0.01))
    with server.in_thread() as url:
        yield server, url


# --- test-grader ---------------------------------------------------------------------------------


def test_test_grader_prints_the_table_and_average(seeded: str) -> None:
    result = run(seeded, "test-grader", "--evaluator", "tool_selection", "--agent-id", "bot")

    assert result.exit_code == 0, result.output
    for header in ("record", "score", "notes", "average:"):
        assert header in result.stdout
    assert result.stdout.count("ep-") == 5


def test_test_grader_json_is_one_object(seeded: str) -> None:
    result = run(
        seeded,
        "test-grader",
        "--evaluator",
        "tool_selection",
        "--agent-id",
        "bot",
        "--sample-size",
        "8",
        "-o",
        "json",
    )

    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert len(data["records"]) == 8
    assert {"episodeId", "score", "reason"} <= data["records"][0].keys()
    scores = [r["score"] for r in data["records"]]
    assert data["average"] == pytest.approx(sum(scores) / len(scores))


# --- label-batch ---------------------------------------------------------------------------------


def test_label_batch_with_a_preset_is_resumable(seeded: str, store: store_base.EpisodeStore) -> None:
    first = run(seeded, "label-batch", "--evaluator", "tool_selection", "--agent-id", "bot", "-o", "json")
    again = run(seeded, "label-batch", "--evaluator", "tool_selection", "--agent-id", "bot", "-o", "json")
    table = run(seeded, "label-batch", "--evaluator", "tool_selection", "--agent-id", "bot")

    assert first.exit_code == 0, first.output
    report = json.loads(first.stdout)
    assert (report["labeled"], report["failed"], report["skipped"]) == (40, 0, 0)
    assert json.loads(again.stdout)["skipped"] == 40 and json.loads(again.stdout)["labeled"] == 0
    assert "episodes/s" in table.stdout and "skipped" in table.stdout
    assert store.count("bot", labeled=True) == 40
    for episode in store.iter_episodes(store_base.EpisodeQuery(agent_id="bot")):
        assert len(episode.labels) == 1


def test_label_batch_with_a_judge_under_a_storm(
    seeded: str, store: store_base.EpisodeStore, tmp_path: Path, judge_url: tuple[js.JudgeServer, str]
) -> None:
    server, url = judge_url

    result = run(
        seeded,
        "label-batch",
        "--grader",
        str(judge_file(tmp_path, url)),
        "--agent-id",
        "bot",
        "--concurrency",
        "8",
        "--timeout",
        "5",
        "-o",
        "json",
    )

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["labeled"], report["failed"]) == (36, 4)
    assert report["retries"] == 72
    assert server.stats.max_in_flight <= 8
    for episode in store.iter_episodes(store_base.EpisodeQuery(agent_id="bot")):
        (label,) = [label for label in episode.labels if label.grader == "helpfulness"]
        if "JUNK" in episode.state.query:
            assert label.error and not episode.labeled
        else:
            assert label.score is not None and episode.labeled


def test_label_batch_against_a_judge_that_is_down_records_nothing(
    seeded: str, store: store_base.EpisodeStore, tmp_path: Path
) -> None:
    """A judge answering 500 to everything: the run stops early with one line saying so and writes no
    failed label, so reruns during the outage use up no episode's tries; once it answers, a rerun
    labels everything."""
    server = js.JudgeServer(faults=js.Faults(server_error_first=10**9))
    with server.in_thread() as url:
        args = ["label-batch", "--grader", str(judge_file(tmp_path, url)), "--agent-id", "bot"]
        for _ in range(labeling.MAX_FAILED_ATTEMPTS + 1):
            result = run(seeded, *args, "--max-retries", "0", "-o", "json")
            assert_one_line_error(result, "the grader's backend did not answer", "no episode used a try")
            report = json.loads(result.stdout)
            assert report["labeled"] == 0 and report["failed"] == report["graded"] < 40
            assert "500" in report["backendDown"]
        assert all(not e.labels for e in store.iter_episodes(store_base.EpisodeQuery(agent_id="bot")))

        server.faults = js.Faults()
        result = run(seeded, *args, "-o", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["labeled"] == 40


def test_label_batch_min_score_and_review_mode(seeded: str, store: store_base.EpisodeStore) -> None:
    review = run(
        seeded,
        "label-batch",
        "--evaluator",
        "tool_selection",
        "--agent-id",
        "bot",
        "--no-auto-label",
        "-o",
        "json",
    )
    held = run(
        seeded,
        "label-batch",
        "--evaluator",
        "tool_selection",
        "--agent-id",
        "bot",
        "--min-score",
        "0.5",
        "--limit",
        "30",
        "-o",
        "json",
    )

    assert json.loads(review.stdout)["labeled"] == 0
    assert json.loads(held.stdout)["belowMinScore"] == 10
    assert store.count("bot", labeled=True) == 20


# --- dry-run -------------------------------------------------------------------------------------


def test_dry_run_json_is_one_object_with_the_contract_keys(
    seeded: str, tmp_path: Path, judge_url: tuple[js.JudgeServer, str]
) -> None:
    _, url = judge_url

    result = run(
        seeded,
        "dry-run",
        "--grader",
        str(judge_file(tmp_path, url)),
        "--agent-id",
        "bot",
        "--sample-size",
        "200",
        "-o",
        "json",
    )

    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert isinstance(data, dict) and CONTRACT_KEYS <= data.keys()
    assert data["verdict"] in ("GO", "WARNING", "NO-GO")
    assert data["count"] == 36 and data["failed"] == 4
    assert 0 <= data["fractionPerfect"] <= data["fractionAboveZero"] <= 1
    assert all(isinstance(d, str) for d in data["diagnosis"])


@pytest.mark.parametrize("output", ["table", "json"])
def test_dry_run_against_a_judge_that_is_down_gives_no_verdict(
    seeded: str, tmp_path: Path, output: str
) -> None:
    """No score at all is no learning signal either way: one line saying so, not a NO-GO that blames
    the rewards (a CI gate with --fail-on no-go fails for the outage, saying it is one)."""
    server = js.JudgeServer(faults=js.Faults(server_error_first=10**9))
    with server.in_thread() as url:
        args = ["dry-run", "--grader", str(judge_file(tmp_path, url)), "--agent-id", "bot"]
        result = run(seeded, *args, "--sample-size", "10", "--max-retries", "0", "-o", output)
    assert_one_line_error(result, "no verdict", "failed on all 10 sampled episodes", "500")
    assert "NO-GO" not in result.output and result.stdout == ""


def test_dry_run_table_shows_a_verdict_that_explains_itself(
    seeded: str, store: store_base.EpisodeStore
) -> None:
    result = run(seeded, "dry-run", "--evaluator", "tool_selection", "--agent-id", "bot")

    assert result.exit_code == 0, result.output
    assert "verdict: NO-GO" in result.stdout
    assert "too lenient" in result.stdout
    assert store.count("bot", labeled=True) == 0


def test_dry_run_ranges_and_fail_on(seeded: str, tmp_path: Path) -> None:
    ranges = tmp_path / "ranges.yaml"
    ranges.write_text(
        "fractionPerfectMax: 0.7\nfractionPerfectNoGo: 0.8\nmeanMax: 0.7\nstdMax: 0.5\nminSamples: 10\n"
    )

    relaxed = run(
        seeded,
        "dry-run",
        "--evaluator",
        "tool_selection",
        "--agent-id",
        "bot",
        "--ranges",
        str(ranges),
        "-o",
        "json",
    )
    gated = run(
        seeded,
        "dry-run",
        "--evaluator",
        "tool_selection",
        "--agent-id",
        "bot",
        "--fail-on",
        "no-go",
        "-o",
        "json",
    )

    assert json.loads(relaxed.stdout)["verdict"] == "GO"
    assert json.loads(gated.stdout)["verdict"] == "NO-GO"
    assert_one_line_error(gated, "NO-GO")


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        pytest.param(
            "meanMin: 0.9\nmeanMax: 0.2\n", "ranges.meanMax: meanMin (0.9) must not", id="disordered"
        ),
        pytest.param("- 1\n", "ranges: must be an object", id="a-list"),
        pytest.param("stdMax: 0.7\n", "ranges.stdMax: must be <= 0.5", id="out-of-range"),
    ],
)
def test_bad_ranges_are_a_one_line_error_naming_the_key(
    seeded: str, tmp_path: Path, content: str, needle: str
) -> None:
    ranges = tmp_path / "ranges.yaml"
    ranges.write_text(content)
    result = run(
        seeded, "dry-run", "--evaluator", "tool_selection", "--agent-id", "bot", "--ranges", str(ranges)
    )
    assert_one_line_error(result, needle)
    assert "(episode)" not in result.output


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        pytest.param("type: tool_call\nexpected_tol: x\n", "expected_tol", id="unknown-field"),
        pytest.param("type: string_check\noperation: eq\ninput: a\n", "reference", id="missing-field"),
        pytest.param("type: score_model\nmodel: m\ninput: []\n", "input", id="empty-input"),
        pytest.param("type: telepathy\n", "type", id="unknown-type"),
        pytest.param("type: [unclosed\n", "grader", id="not-yaml"),
    ],
)
def test_bad_grader_file_is_a_one_line_error_naming_the_field(
    seeded: str, tmp_path: Path, spec: str, needle: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(spec)

    for command in ("test-grader", "label-batch", "dry-run"):
        assert_one_line_error(run(seeded, command, "--grader", str(path), "--agent-id", "bot"), needle)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        pytest.param(["--grader", "/nonexistent/g.yaml"], "no such file", id="missing-file"),
        pytest.param(["--grader", "x.yaml", "--evaluator", "exact_match"], "not both", id="both"),
        pytest.param([], "--evaluator", id="neither"),
        pytest.param(["--evaluator", "vibes"], "not a preset", id="unknown-preset"),
        pytest.param(["--evaluator", "exact_match", "--sample-size", "0"], "--sample-size", id="zero-sample"),
        pytest.param(["--evaluator", "exact_match", "--timeout", "soon"], "--timeout", id="bad-timeout"),
    ],
)
def test_bad_flags_are_one_line_errors(seeded: str, args: list[str], needle: str) -> None:
    assert_one_line_error(run(seeded, "dry-run", "--agent-id", "bot", *args), needle)


def test_label_batch_bad_numbers(seeded: str) -> None:
    base = ["label-batch", "--evaluator", "tool_selection", "--agent-id", "bot"]
    assert_one_line_error(run(seeded, *base, "--min-score", "2"), "--min-score")
    assert_one_line_error(run(seeded, *base, "--concurrency", "0"), "--concurrency")
    assert_one_line_error(run(seeded, *base, "--rps", "-1"), "--rps")


# --- the installed entry point and the judge as a process ----------------------------------------


def test_entry_point_dry_run_against_the_judge_process(seeded: str, tmp_path: Path, free_port: int) -> None:
    judge = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lightning_op.testing.judge_server",
            "--port",
            str(free_port),
            "--latency-ms",
            "5",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert judge.stdout is not None
        line = judge.stdout.readline()
        assert "listening on" in line
        exe = Path(sys.executable).with_name("lightning-op")
        result = subprocess.run(
            [
                str(exe),
                "dry-run",
                "--store",
                seeded,
                "--agent-id",
                "bot",
                "--grader",
                str(judge_file(tmp_path, line.split()[-1])),
                "--sample-size",
                "20",
                "-o",
                "json",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "COLUMNS": "200"},
        )
    finally:
        judge.terminate()
        judge.wait(timeout=30)

    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert CONTRACT_KEYS <= data.keys() and data["count"] + data["failed"] == 20
