"""What the ``lightning-op`` commands say and exit with when the input is wrong or the work failed.

Run as a user runs them (``python -m lightning_op.cli`` in a subprocess, unless a test needs to look
inside), each case checks the exit status and that stderr is one line naming the problem.

Covers: read commands pointed at a store file that does not exist fail naming it and create nothing
(dataset-info --path still reads a bare file without a store; start-training from a file may start a
store), an empty ``--store`` is an error rather than the default store; huge ``--sample-size`` and
``--since`` ages are one-line errors naming the option; ``label-batch --concurrency`` is bounded and
never starts more workers than there are episodes; ``label-batch`` and ``test-grader`` exit 1 when
every grading failed, and when the agent has no episodes (a rerun with nothing left to grade is exit
0); ``dataset-info`` exits 1 after printing when a dataset's files changed or a file has bad lines;
``operator`` without a usable kubeconfig exits 1 with one line; ``promote-model --adapter`` needs
``--agent-id``, and compare-versions compares a promotion that lacks the previous model with the
version seen last besides it, and names that promotion when there is none; a grader file that is not
UTF-8, empty, not an object, or a directory is named; ``label-batch --limit 0`` is refused as in
list-episodes; ``get-training-status --watch`` waits with ``-o json`` too and exits 1 for a job that
failed; compare-versions' limits must be numbers from 0 to 1 (nan refused) and ``--fail-on failed``
exits 1 after printing; a bare ``lightning-op`` prints its help (exit 0), and an unknown command
names the program once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from lightning_op import cli
from lightning_op.api import episode as ep
from lightning_op.pipeline import labeling
from lightning_op.store import base as store_base

T0 = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)


def lightning_op(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lightning_op.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        check=False,
    )


def one_line_error(result: subprocess.CompletedProcess[str], *needles: str, code: int = 1) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.rstrip("\n").split("\n")
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def episode(
    n: int, *, agent: str = "bot", expected: str | None = "lookup_order", reward: float | None = None
) -> ep.Episode:
    item = ep.Episode(
        agent_id=agent,
        session_id=f"s-{n}",
        turn=0,
        timestamp=T0 + timedelta(minutes=n),
        model_version="base-v1",
        state=ep.State(
            query=f"where is order {n}?", context={"expected_tool": expected} if expected else None
        ),
        action=ep.Action(tool="lookup_order", arguments={"order": n}),
    )
    if reward is not None:
        item.reward, item.labeled = reward, True
        item.labels = [ep.Label(score=reward, grader="rule")]
    return item


@pytest.fixture
def seeded(store: store_base.EpisodeStore, store_url: str) -> str:
    """Three gradable episodes of ``bot``, two of ``nocontext`` (no expected tool: tool_selection
    fails on them), twelve labeled ones of ``labeled``."""
    store.insert_many([episode(n) for n in range(3)])
    store.insert_many([episode(10 + n, agent="nocontext", expected=None) for n in range(2)])
    store.insert_many([episode(20 + n, agent="labeled", reward=0.9) for n in range(12)])
    return store_url


# --- a store that is not there ------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["list-episodes", "--agent-id", "bot", "-o", "json"], id="list-episodes"),
        pytest.param(["label-episode", "--episode-id", "ep-1", "--reward", "0.3"], id="label-episode"),
        pytest.param(["test-grader", "--agent-id", "bot", "--evaluator", "tool_selection"], id="test-grader"),
        pytest.param(["label-batch", "--agent-id", "bot", "--evaluator", "tool_selection"], id="label-batch"),
        pytest.param(["dry-run", "--agent-id", "bot", "--evaluator", "tool_selection"], id="dry-run"),
        pytest.param(["build-dataset", "--agent-id", "bot"], id="build-dataset"),
        pytest.param(["dataset-info", "--name", "ds"], id="dataset-info"),
        pytest.param(["get-training-status", "--job", "j1"], id="get-training-status"),
        pytest.param(["report", "--job", "j1"], id="report"),
        pytest.param(["compare-versions", "--agent-id", "bot"], id="compare-versions"),
        pytest.param(["promote-model", "--job", "j1"], id="promote-model"),
        pytest.param(["start-training", "--dataset", "ds", "--base-model", "m"], id="start-training-dataset"),
    ],
)
def test_a_missing_store_file_is_named_and_not_created(tmp_path: Path, args: list[str]) -> None:
    missing = tmp_path / "typo" / "episodes.db"

    result = lightning_op(args[0], "--store", f"sqlite:///{missing}", *args[1:])

    one_line_error(result, f"store file {missing} does not exist")
    assert result.stdout == ""
    assert not missing.parent.exists()


def test_the_store_in_the_environment_is_checked_too(tmp_path: Path) -> None:
    missing = tmp_path / "episodes.db"

    result = lightning_op("list-episodes", env={"LIGHTNING_STORE": f"sqlite:///{missing}"})

    one_line_error(result, str(missing), "does not exist")
    assert not missing.exists()


def test_an_empty_store_option_is_an_error_not_the_default_store(tmp_path: Path) -> None:
    home = tmp_path / "data"

    result = lightning_op("list-episodes", "--store", "", env={"XDG_DATA_HOME": str(home)})

    one_line_error(result, "--store", "empty", code=2)
    assert not home.exists()


def test_dataset_info_reads_a_bare_file_without_a_store(tmp_path: Path) -> None:
    data = tmp_path / "rows.jsonl"
    data.write_text(
        json.dumps(
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
        )
        + "\n"
    )
    missing = tmp_path / "none.db"

    result = lightning_op(
        "dataset-info", "--store", f"sqlite:///{missing}", "--path", str(data), "-o", "json"
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["valid"] is True
    assert not missing.exists()


# --- numbers too large -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        pytest.param(
            [
                "test-grader",
                "--agent-id",
                "bot",
                "--evaluator",
                "tool_selection",
                "--sample-size",
                "99999999999999999999",
            ],
            "--sample-size must be at most",
            id="test-grader-sample-size",
        ),
        pytest.param(
            [
                "test-grader",
                "--agent-id",
                "bot",
                "--evaluator",
                "tool_selection",
                "--sample-size",
                "9223372036854775807",
            ],
            "--sample-size must be at most",
            id="test-grader-sample-size-int64",
        ),
        pytest.param(
            ["list-episodes", "--since", "999999999d"],
            "--since '999999999d' is not a time",
            id="since-date-range",
        ),
        pytest.param(
            ["list-episodes", "--since", "9999999999999d"],
            "--since '9999999999999d' is not a time",
            id="since-c-int",
        ),
        pytest.param(
            ["label-batch", "--agent-id", "bot", "--evaluator", "tool_selection", "--since", "99999999999h"],
            "--since",
            id="label-batch-since",
        ),
        pytest.param(
            [
                "label-batch",
                "--agent-id",
                "bot",
                "--evaluator",
                "tool_selection",
                "--concurrency",
                "10000000",
            ],
            "--concurrency must be at most 1024",
            id="label-batch-concurrency",
        ),
        pytest.param(
            ["dry-run", "--agent-id", "bot", "--evaluator", "tool_selection", "--concurrency", "1025"],
            "--concurrency must be at most 1024",
            id="dry-run-concurrency",
        ),
        pytest.param(
            ["build-dataset", "--agent-id", "labeled", "--max-episodes", "99999999999999999999"],
            "--max-episodes must be at most",
            id="build-dataset-max-episodes",
        ),
    ],
)
def test_huge_numbers_are_one_line_errors_naming_the_option(
    seeded: str, args: list[str], needle: str
) -> None:
    one_line_error(lightning_op(args[0], "--store", seeded, *args[1:]), needle)


def test_label_batch_starts_no_more_workers_than_episodes(
    seeded: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[int] = []
    run_workers = labeling._run_workers

    async def counting(source: Any, handle: Any, engine: Any, concurrency: int) -> None:
        started.append(concurrency)
        await run_workers(source, handle, engine, concurrency)

    monkeypatch.setattr(labeling, "_run_workers", counting)
    result = CliRunner().invoke(
        cli.cli,
        [
            "label-batch",
            "--store",
            seeded,
            "--agent-id",
            "bot",
            "--evaluator",
            "tool_selection",
            "--concurrency",
            "1024",
            "--no-auto-label",
            "-o",
            "json",
        ],
        catch_exceptions=False,
    )

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["scored"] == 3
    assert started == [3]


# --- work that failed ------------------------------------------------------------------------------


def test_label_batch_exits_1_when_every_grading_failed(seeded: str) -> None:
    result = lightning_op(
        "label-batch",
        "--store",
        seeded,
        "--agent-id",
        "nocontext",
        "--evaluator",
        "tool_selection",
        "-o",
        "json",
    )

    one_line_error(result, "every grading failed (2 of 2)", "no expected tool")
    assert json.loads(result.stdout)["failed"] == 2, "the report is still printed"


def test_test_grader_exits_1_when_every_grading_failed(seeded: str) -> None:
    result = lightning_op(
        "test-grader", "--store", seeded, "--agent-id", "nocontext", "--evaluator", "tool_selection"
    )

    one_line_error(result, "every grading failed (2 of 2)")
    assert "average: - (2 failed)" in result.stdout


@pytest.mark.parametrize("command", ["label-batch", "test-grader"])
def test_an_agent_with_no_episodes_is_exit_1(seeded: str, command: str) -> None:
    result = lightning_op(command, "--store", seeded, "--agent-id", "nobody", "--evaluator", "tool_selection")

    one_line_error(result, "no episodes", "nobody", "--agent-id")


def test_a_rerun_with_nothing_left_to_grade_is_exit_0(seeded: str) -> None:
    args = ("label-batch", "--store", seeded, "--agent-id", "bot", "--evaluator", "tool_selection")
    first = lightning_op(*args)
    again = lightning_op(*args, "--unlabeled-only")

    assert first.returncode == 0, first.stderr
    assert again.returncode == 0, again.stderr
    assert "nothing to grade" in again.stdout


def test_dataset_info_exits_1_when_the_files_changed(seeded: str) -> None:
    built = lightning_op(
        "build-dataset", "--store", seeded, "--agent-id", "labeled", "--name", "ds1", "-o", "json"
    )
    assert built.returncode == 0, built.stderr
    path = Path(json.loads(built.stdout)["path"])
    assert lightning_op("dataset-info", "--store", seeded, "--name", "ds1").returncode == 0

    with path.open("a") as f:
        f.write(json.dumps({"messages": [{"role": "user", "content": "x"}]}) + "\n")
    result = lightning_op("dataset-info", "--store", seeded, "--name", "ds1", "-o", "json")

    assert result.returncode == 1
    assert json.loads(result.stdout)["verified"] is False
    assert "changed since it was built" in result.stderr


def test_dataset_info_exits_1_for_a_file_with_bad_lines(seeded: str, tmp_path: Path) -> None:
    script = tmp_path / "gen.py"
    script.write_text("print('not a dataset')\n")

    result = lightning_op("dataset-info", "--store", seeded, "--path", str(script))

    assert result.returncode == 1
    assert "valid" in result.stdout and "NO" in result.stdout
    assert "1 bad lines of 1" in result.stderr


# --- operator, promotion, graders ------------------------------------------------------------------


@pytest.mark.parametrize("kubeconfig", ["missing", "not-yaml"])
def test_operator_without_a_kubeconfig_exits_1_with_one_line(
    tmp_path: Path, store_url: str, kubeconfig: str
) -> None:
    path = tmp_path / "kubeconfig"
    if kubeconfig == "not-yaml":
        path.write_text(": [\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_SERVICE_")}
    result = subprocess.run(
        [sys.executable, "-m", "lightning_op.cli", "operator", "--store", store_url, "--metrics-port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "KUBECONFIG": str(path), "HOME": str(tmp_path)},
        check=False,
    )

    one_line_error(result, "no Kubernetes config: set KUBECONFIG or run in a cluster")


def test_promote_model_adapter_needs_an_agent_and_compare_versions_names_the_partial_promotion(
    seeded: str, tmp_path: Path
) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")

    one_line_error(
        lightning_op("promote-model", "--store", seeded, "--adapter", str(adapter)),
        "--adapter needs --agent-id",
    )
    promoted = lightning_op(
        "promote-model", "--store", seeded, "--adapter", str(adapter), "--agent-id", "bot", "-o", "json"
    )
    assert promoted.returncode == 0, promoted.stderr
    record = json.loads(promoted.stdout)
    assert record["agentId"] == "bot" and record["previousModel"] is None

    # no previous model recorded: the promoted one against the version seen last besides it
    for extra in ((), ("--before", "base-v1")):
        compared = lightning_op(
            "compare-versions", "--store", seeded, "--agent-id", "bot", *extra, "-o", "json"
        )
        assert compared.returncode == 0, compared.stderr
        data = json.loads(compared.stdout)
        assert (data["before"]["modelVersion"], data["after"]["modelVersion"]) == (
            "base-v1",
            record["promotedModel"],
        )
    # ... and with no other version seen, the error names the promotion and asks for --before
    lonely = lightning_op(
        "promote-model", "--store", seeded, "--adapter", str(adapter), "--agent-id", "lonely", "-o", "json"
    )
    message = one_line_error(
        lightning_op("compare-versions", "--store", seeded, "--agent-id", "lonely"),
        json.loads(lonely.stdout)["id"],
    )
    assert "does not record the previous model" in message and "--before" in message
    assert "no promotion" not in message

    narrow = lightning_op(
        "promote-model", "--store", seeded, "--adapter", str(adapter), "--agent-id", "bot",
        "--model-name", "bot-tuned-v2", env={"COLUMNS": "50"},
    )  # fmt: skip
    assert narrow.returncode == 0, narrow.stderr
    lines = narrow.stdout.splitlines()
    previous = record["promotedModel"]
    assert lines[0] == f"promoted bot-tuned-v2 (adapter {adapter.resolve()}); previous model: {previous}"
    assert lines[-1].endswith(
        "; verify on live traffic with: lightning-op compare-versions --agent-id bot"
    ), "a line to copy is not broken at the terminal's width"


def test_compare_versions_refuses_a_version_against_itself_and_names_the_versions_seen(seeded: str) -> None:
    compare = ("compare-versions", "--store", seeded, "--agent-id", "bot")
    one_line_error(
        lightning_op(*compare, "--before", "base-v1", "--after", "base-v1"),
        "both versions are base-v1 (from --before and --after)",
    )
    typo = lightning_op(*compare, "--before", "base-v1", "--after", "tuned-typo")
    assert typo.returncode == 0, typo.stderr
    assert typo.stderr.strip() == (
        "warning: --after tuned-typo: no episodes of bot with that model version; versions seen: base-v1"
    )
    after_row = next(line for line in typo.stdout.splitlines() if "tuned-typo" in line)
    assert after_row.split("│")[-2].strip() == "–", "no episodes: no error rate, not 0.000"


def test_a_grader_file_that_is_not_utf8_is_named(seeded: str, tmp_path: Path) -> None:
    grader = tmp_path / "bad9.yaml"
    grader.write_bytes(b"\x89PNG\x00\x01\xff\xfe")

    one_line_error(
        lightning_op("dry-run", "--store", seeded, "--agent-id", "bot", "--grader", str(grader)),
        f"grader {grader}: not UTF-8 text",
    )


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        pytest.param("", "empty: a grader spec is an object", id="empty-file"),
        pytest.param("- string_check\n", "not a list", id="a-list"),
        pytest.param(None, "is a directory, not a grader file", id="a-directory"),
    ],
)
def test_a_grader_file_that_is_no_spec_says_what_it_is(
    seeded: str, tmp_path: Path, content: str | None, needle: str
) -> None:
    grader = tmp_path / "grader.yaml"
    if content is None:
        grader.mkdir()
    else:
        grader.write_text(content)
    one_line_error(
        lightning_op("dry-run", "--store", seeded, "--agent-id", "bot", "--grader", str(grader)), needle
    )


def test_label_batch_limit_zero_is_refused_as_in_list_episodes(seeded: str) -> None:
    for command in ("list-episodes", "label-batch"):
        args = [command, "--store", seeded, "--agent-id", "bot", "--limit", "0"]
        if command == "label-batch":
            args += ["--evaluator", "tool_selection"]
        one_line_error(lightning_op(*args), "--limit must be at least 1", code=1)


def test_a_bare_call_prints_help_and_an_unknown_command_names_the_program_once() -> None:
    bare = lightning_op()
    assert bare.returncode == 0 and bare.stdout.startswith("Usage: lightning-op"), bare
    assert bare.stderr == ""
    unknown = one_line_error(lightning_op("nonsense"), "No such command 'nonsense'", code=2)
    assert unknown.count("lightning-op") == 0, unknown


def test_watching_a_job_waits_with_json_output_and_exits_1_when_it_failed(tmp_path: Path) -> None:
    """``get-training-status --watch -o json`` waits for the job (a script reads the finished job), and
    a job that ends Failed is exit 1, as ``start-training --wait``: here its driver (a process on this
    host) dies after a second, which the status reports as Failed."""
    import socket
    import time

    from lightning_op import store as store_mod
    from lightning_op.pipeline import training

    url = f"sqlite:///{tmp_path / 'episodes.db'}"
    driver = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        store = store_mod.open_store(url)
        job = {"id": "watched", "phase": "Training", "workdir": str(tmp_path / "watched")}
        job["driver"] = {"pid": driver.pid, "host": socket.gethostname()}
        store.put_record(training.RECORD_KIND, "watched", job)
        store.close()
        watcher = subprocess.Popen(
            [sys.executable, "-m", "lightning_op.cli", "get-training-status", "--store", url]
            + ["--job", "watched", "--watch", "-o", "json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(3.0)
        assert watcher.poll() is None, "it returned before the job finished"
        driver.kill()
        driver.wait()
        out, err = watcher.communicate(timeout=30)
    finally:
        driver.kill()
    assert watcher.returncode == 1, (out, err)
    assert json.loads(out)["phase"] == "Failed"
    assert "training job watched failed" in err


@pytest.mark.parametrize("value", ["nan", "-1", "1.5", "inf"])
def test_compare_versions_limits_must_be_fractions(seeded: str, value: str) -> None:
    """A nan limit would pass every comparison (the check switched off without a word)."""
    result = lightning_op(
        "compare-versions",
        "--store",
        seeded,
        "--agent-id",
        "bot",
        "--before",
        "a",
        "--after",
        "b",
        "--max-reward-drop",
        value,
    )
    one_line_error(result, "--max-reward-drop", "is not a number from 0 to 1", code=2)


def test_compare_versions_fail_on_failed_exits_1_after_printing(
    store: store_base.EpisodeStore, store_url: str
) -> None:
    good = [episode(n, agent="shop", reward=0.9) for n in range(10)]
    worse = [episode(100 + n, agent="shop", reward=0.2) for n in range(10)]
    for item in worse:
        item.model_version = "tuned-v2"
    store.insert_many([*good, *worse])
    compare = ("compare-versions", "--store", store_url, "--agent-id", "shop", "--before", "base-v1")
    args = (*compare, "--after", "tuned-v2", "--min-episodes", "5", "-o", "json")
    plain = lightning_op(*args)
    assert plain.returncode == 0 and json.loads(plain.stdout)["verification"]["status"] == "Failed"
    gated = lightning_op(*args, "--fail-on", "failed")
    assert json.loads(gated.stdout)["verification"]["status"] == "Failed", "printed first"
    one_line_error(gated, "verification is Failed (--fail-on failed)", "average reward fell 0.700")
