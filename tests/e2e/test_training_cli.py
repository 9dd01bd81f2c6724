"""``start-training``, ``get-training-status`` and ``report`` on a tiny model and a tiny dataset.

The base model is the demo's in miniature (``demo.model``, hidden 64): it calls the wrong tool for
three of five query families. The dataset holds right answers; rounds are scored with the
``tool_selection`` grader on held-out queries (``--eval-file``). Every command runs as a real process
(``python -m lightning_op.cli``), the trainer as its subprocess, on a SQLite store.

Covers:
- training lifts the held-out score from the base model's (below the threshold) over the threshold,
  the job is recorded as Succeeded with the best round's adapter, and the score improvement is
  listed against the baseline;
- with a threshold no round can meet, ``--max-rounds 2`` runs two rounds and each records the decayed
  learning rate (``lr * lrDecay**(k-1)``); round 2 was started from round 1's adapter at that rate;
  the job ends Failed (MaxRounds) with no model to promote; it ran detached (``--no-wait``) and was
  followed with ``get-training-status -o json``;
- ``get-training-status`` prints the seed's table (round, epoch, train loss, valid loss, score);
- ``report`` writes an HTML page with the three plots embedded and as PNG files beside it;
- bad input (no model directory, an unknown dataset) fails with a one-line reason and exit 1.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lightning_op.demo import agent
from lightning_op.demo import model as demo_model

pytestmark = pytest.mark.slow


def cli(*args: str, check: bool = True, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "lightning_op.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"},
    )
    if check:
        assert result.returncode == 0, (
            f"{args[0]} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("training-cli")
    base = demo_model.build_flawed_base(
        root / "base",
        demo_model.BaseModelSettings(hidden_size=64, steps=400, learning_rate=5e-3, p_right=0.3),
    )
    right = [agent.tool_call_row(q, q.expected_tool) for q in agent.traffic(90, seed=3)]
    return {
        "root": root,
        "base": base,
        "train": write_rows(root / "train.jsonl", right[:80]),
        "validation": write_rows(root / "validation.jsonl", right[80:]),
        "eval": write_rows(
            root / "heldout.jsonl", [agent.tool_call_row(q, q.expected_tool) for q in agent.heldout_queries()]
        ),
        "store": root / "episodes.db",
    }


def start_args(ws: dict[str, Path], *extra: str) -> list[str]:
    return [
        "start-training",
        "--store",
        f"sqlite:///{ws['store']}",
        "--agent-id",
        "analytics-agent",
        "--base-model",
        str(ws["base"]),
        "--train-file",
        str(ws["train"]),
        "--validation-file",
        str(ws["validation"]),
        "--eval-file",
        str(ws["eval"]),
        "--lora-rank",
        "8",
        "--batch-size",
        "8",
        "--max-new-tokens",
        "96",
        "--seed",
        "0",
        "--workdir",
        str(ws["root"] / "jobs"),
        *extra,
    ]


@pytest.fixture(scope="module")
def lifted_job(workspace: dict[str, Path]) -> dict[str, Any]:
    result = cli(
        *start_args(
            workspace,
            "--epochs",
            "8",
            "--learning-rate",
            "5e-3",
            "--threshold",
            "0.75",
            "--max-rounds",
            "3",
            "--job-id",
            "lift",
            "-o",
            "json",
        )
    )
    job: dict[str, Any] = json.loads(result.stdout)
    return job


def test_training_lifts_the_score_over_the_threshold(lifted_job: dict[str, Any]) -> None:
    job = lifted_job
    assert job["phase"] == "Succeeded", job["message"]
    baseline = job["baseline"]["score"]
    result = job["result"]
    assert baseline < 0.75, f"the base model should start below the threshold, scored {baseline}"
    assert result["thresholdMet"] is True and result["score"] >= 0.75
    assert result["stopReason"] == "ThresholdMet"
    assert result["score"] > baseline
    assert "score" in {change["metric"] for change in result["improvements"]}
    adapter = Path(job["fineTunedModel"])
    assert (adapter / "adapter_config.json").is_file()
    # Every round ran at lr * 0.6**(k-1); the last one met the threshold.
    for entry in job["rounds"]:
        assert entry["learningRate"] == pytest.approx(5e-3 * 0.6 ** (entry["round"] - 1))
        assert entry["epochs"], "each round records its epochs' losses"
        last = entry["epochs"][-1]
        assert (entry["trainLoss"], entry["validLoss"]) == (last["trainLoss"], last["validLoss"]), (
            "a round's losses are its last epoch's, to the digit (its progress line and the table agree)"
        )
    assert job["rounds"][-1]["score"] >= 0.75


def test_rounds_record_the_decayed_learning_rate(workspace: dict[str, Path]) -> None:
    started = cli(
        *start_args(
            workspace,
            "--epochs",
            "1",
            "--learning-rate",
            "1e-5",
            "--threshold",
            "1.0",
            "--max-rounds",
            "2",
            "--lr-decay",
            "0.5",
            "--job-id",
            "decay",
            "--no-wait",
            "-o",
            "json",
        )
    )
    assert json.loads(started.stdout)["id"] == "decay"
    deadline = time.monotonic() + 240
    while True:
        job = json.loads(
            cli(
                "get-training-status",
                "--store",
                f"sqlite:///{workspace['store']}",
                "--job",
                "decay",
                "-o",
                "json",
            ).stdout
        )
        if job["phase"] in ("Succeeded", "Failed", "Cancelled") or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert job["phase"] == "Failed", "a job that never met its threshold offers no model"
    assert job["result"]["stopReason"] == "MaxRounds" and job["fineTunedModel"] is None
    assert [r["learningRate"] for r in job["rounds"]] == pytest.approx([1e-5, 5e-6])
    round2 = Path(job["workdir"]) / "round-2"
    config = json.loads((round2 / "trainer-config.json").read_text())
    assert config["hyperparameters"]["learningRate"] == pytest.approx(5e-6)
    assert config["initAdapter"] == job["rounds"][0]["checkpoint"]
    # What the trainer actually stepped with never exceeded the decayed rate.
    used = [
        json.loads(line).get("learningRate") for line in (round2 / "progress.jsonl").read_text().splitlines()
    ]
    assert max(lr for lr in used if lr is not None) <= 5e-6 * (1 + 1e-9)


def test_status_prints_the_round_epoch_loss_score_table(
    workspace: dict[str, Path], lifted_job: dict[str, Any]
) -> None:
    out = cli("get-training-status", "--store", f"sqlite:///{workspace['store']}", "--job", "lift").stdout
    for header in ("round", "epoch", "train loss", "valid loss", "reward/score"):
        assert header in out
    assert "baseline" in out
    assert f"{lifted_job['result']['score']:.3f}" in out
    assert "Succeeded" in out


def test_report_is_a_self_contained_html_page_with_plots(
    workspace: dict[str, Path], lifted_job: dict[str, Any], tmp_path: Path
) -> None:
    result = cli(
        "report",
        "--store",
        f"sqlite:///{workspace['store']}",
        "--job",
        "lift",
        "--output",
        str(tmp_path / "report"),
        "-o",
        "json",
    )
    info = json.loads(result.stdout)
    index = Path(info["report"])
    html = index.read_text()
    assert "lift" in html and "Rounds" in html
    assert html.count('src="data:image/png;base64,') == 3
    for name in ("loss.png", "scores.png", "rewards.png"):
        assert (index.parent / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ["--base-model", "/nonexistent/model", "--train-file", "X"],
            "not a model directory",
            id="no-model",
        ),
        pytest.param(
            ["--base-model", "BASE", "--dataset", "nope"], "no dataset named 'nope'", id="unknown-dataset"
        ),
    ],
)
def test_bad_input_fails_with_one_line(workspace: dict[str, Path], args: list[str], message: str) -> None:
    args = [
        str(workspace["base"]) if a == "BASE" else str(workspace["train"]) if a == "X" else a for a in args
    ]
    result = cli("start-training", "--store", f"sqlite:///{workspace['store']}", *args, check=False)
    assert result.returncode == 1
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
