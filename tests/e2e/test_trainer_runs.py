"""The trainer process end to end on a tiny Llama (hidden 64, 2 layers) and a toy tool-choice task.

The task: map a query's keyword to one of five tools (``analyze_churn``, ``sales_report``, ...).
One training run (``python -m lightning_op.trainer --config``, with evaluation) is shared by the
tests that need a finished run.

Covers:
- training lifts the ``tool_selection`` score over the base model's (``evaluate`` baseline), and the
  ``completed`` line carries the score, the losses and the adapter path, which holds a loadable
  adapter; progress lines carry percent, step, loss, tokens/s and ETA;
- the saved adapter scores the same through ``evaluate_model`` (merged) as reported at the end of
  training (in memory), and a next round with ``initAdapter`` starts from the trained weights;
- SIGTERM mid-run writes a checkpoint and exits 143 with a resumable ``Terminated`` status; resuming
  ends within 1% of the uninterrupted run's final loss (same seed, dropout on);
- an injected NaN loss stops the run with ``Diverged`` (exit 3, status file) before any adapter;
- injected out-of-memory errors halve the micro-batch (accumulation doubles) and the run completes;
  one error more than the three halvings fails with ``OutOfMemory`` (exit code 4);
- a dataset with bad lines fails with exit 2 and the line numbers, before training starts;
- an evaluation whose LLM judge is down exits 5 with a ``failed`` line, not a score of 0.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import tool_choice
from support.tool_choice import write_jsonl as _write_jsonl

from lightning_op.testing import judge_server as js
from lightning_op.training import config as cfg
from lightning_op.training import evaluate, local

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """In-process runs use one thread too (see ``_env``)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tool_choice.make_workdir(tmp_path_factory.mktemp("trainer"))


def _config(workdir: Path, out: str, **hyper: Any) -> dict[str, Any]:
    hp = dict(tool_choice.HYPERPARAMETERS)
    hp.update(hyper)
    return {
        "baseModel": "tiny",
        "trainFile": "train.jsonl",
        "validationFile": "valid.jsonl",
        "outputDir": out,
        "device": "cpu",
        "hyperparameters": hp,
    }


def _write_config(workdir: Path, name: str, data: dict[str, Any]) -> Path:
    path = workdir / name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIGHTNING_TRAINER_INJECT")}
    # One thread: this model is too small to gain from two, and on a shared 2-core machine two
    # OpenMP threads per process thrash (5x slower under load).
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.update(extra)
    return env


def _trainer(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lightning_op.trainer", *args],
        capture_output=True,
        text=True,
        env=env or _env(),
        timeout=240,
    )


def _events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def trained(workdir: Path) -> dict[str, Any]:
    """One full training round with evaluation through the CLI, as start-training runs it."""
    data = _config(workdir, "run")
    data["evaluation"] = {"graderSpec": "tool_selection", "maxNewTokens": 48}
    path = _write_config(workdir, "run.yaml", data)
    proc = _trainer("--config", str(path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"config": path, "events": _events(proc.stdout), "out": workdir / "run"}


def test_training_lifts_the_tool_selection_score(workdir: Path, trained: dict[str, Any]) -> None:
    baseline = _trainer("evaluate", "--config", str(trained["config"]))
    assert baseline.returncode == 0, baseline.stderr[-3000:]
    (evaluated,) = [e for e in _events(baseline.stdout) if e["event"] == "evaluated"]
    final = trained["events"][-1]
    assert final["event"] == "completed" and final["reason"] == "Completed"
    assert final["score"] >= evaluated["score"] + 0.3, (evaluated["score"], final["score"])
    assert final["perMetric"]["toolAccuracy"] > evaluated["perMetric"]["toolAccuracy"]
    assert final["trainLoss"] < 5.0 and final["validLoss"] is not None
    assert json.loads((trained["out"] / "status.json").read_text()) == final
    assert (Path(final["adapterPath"]) / "adapter_config.json").is_file()
    detail = json.loads((trained["out"] / "evaluation.json").read_text())
    assert len(detail["perExample"]) == 20

    progress = [e for e in trained["events"] if e["event"] == "progress"]
    first, last = progress[0], progress[-1]
    assert set(first) >= {
        "percent",
        "epoch",
        "step",
        "totalSteps",
        "loss",
        "tokensPerSecond",
        "etaSeconds",
        "learningRate",
    }
    assert last["percent"] == 100.0 and last["step"] == last["totalSteps"] == final["totalSteps"]
    step_losses = [e["loss"] for e in progress if e["loss"] is not None]
    assert step_losses[0] > step_losses[-1]
    assert all(e["tokensPerSecond"] > 0 for e in progress if e["tokensPerSecond"] is not None)
    assert any(e.get("epochEnd") and e["validLoss"] is not None for e in progress)


def test_evaluating_with_a_judge_that_is_down_exits_5_without_a_score(
    workdir: Path, trained: dict[str, Any]
) -> None:
    """A baseline scored by an LLM judge that answers HTTP 500 to everything: each example is tried
    ``evaluate.GRADE_ATTEMPTS`` times, then the trainer says the judge was unavailable (exit 5, a
    ``failed`` line naming the judge's error) instead of reporting a score of 0."""
    server = js.JudgeServer(faults=js.Faults(server_error_first=10_000))
    with server.in_thread() as base_url:
        data = yaml.safe_load(trained["config"].read_text(encoding="utf-8"))
        data["evaluation"] = {
            "maxNewTokens": 16,
            "graderSpec": {
                "type": "score_model",
                "name": "judge",
                "model": "judge-test",
                "base_url": base_url,
                "input": [{"role": "user", "content": "Reply: {{sample.output_text}}"}],
            },
        }
        path = _write_config(workdir, "judge-down.yaml", data)
        proc = _trainer("evaluate", "--config", str(path), "--limit", "3")
    assert proc.returncode == int(local.ExitCode.EVALUATION_FAILED), proc.stderr[-3000:]
    (failed,) = [e for e in _events(proc.stdout) if e["event"] == "failed"]
    assert failed["reason"] == "EvaluationFailed"
    assert "failed on all 3 examples" in failed["message"] and "HTTP 500" in failed["message"]
    assert not [e for e in _events(proc.stdout) if e["event"] == "evaluated"]
    assert server.stats.requests == 3 * evaluate.GRADE_ATTEMPTS


def test_sigterm_then_resume_matches_the_uninterrupted_run(workdir: Path, trained: dict[str, Any]) -> None:
    path = _write_config(
        workdir, "interrupted.yaml", {**_config(workdir, "interrupted"), "resumeFrom": "auto"}
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "lightning_op.trainer", "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=_env(),
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(json.loads(line))
        if lines[-1]["event"] == "progress" and lines[-1]["step"] >= 45:
            proc.send_signal(signal.SIGTERM)
            break
    lines.extend(json.loads(line) for line in proc.stdout)
    assert proc.wait(timeout=60) == 143
    status = json.loads((workdir / "interrupted" / "status.json").read_text())
    assert status["event"] == "failed" and status["reason"] == "Terminated" and status["resumable"]
    stopped_at = status["step"]
    assert 45 <= stopped_at < status["totalSteps"]
    assert Path(status["checkpointPath"]).name == f"step-{stopped_at:07d}"

    writer = local.ProgressWriter(workdir / "interrupted" / "status.json", stream=io.StringIO())
    result = local.train(cfg.load_config(path), writer=writer, handle_sigterm=False)
    assert writer.last is not None and writer.last["event"] == "completed"
    expected = trained["events"][-1]["trainLoss"]
    assert result.steps == trained["events"][-1]["step"]
    assert result.train_loss is not None
    assert abs(result.train_loss - expected) <= 0.01 * expected, (result.train_loss, expected)


def test_resume_auto_skips_checkpoints_of_another_run(workdir: Path) -> None:
    """A run's output directory reused by a run with another config: ``resumeFrom: auto`` starts the
    new run from step 0 (before, it took the old run's step-12 checkpoint and reported "12 of 4"
    steps with the old run's weights), the stale checkpoints are removed, and naming one explicitly
    is a clear error."""

    def config(epochs: int, resume: str | None = None) -> cfg.TrainerConfig:
        data = _config(workdir, "reused", epochs=epochs, checkpointSteps=4, batchSize=16, packing=False)
        data.pop("validationFile")
        if resume is not None:
            data["resumeFrom"] = resume
        return cfg.parse_config(data, base_dir=workdir)

    def run(c: cfg.TrainerConfig) -> tuple[Any, str | None]:
        """The result, and the checkpoint the run said it resumed from."""
        stream = io.StringIO()
        result = local.train(c, writer=local.ProgressWriter(None, stream=stream), handle_sigterm=False)
        started = next(e for e in _events(stream.getvalue()) if e["event"] == "started")
        return result, started["resumedFrom"]

    first, _ = run(config(3))  # 64 rows / 16 = 4 steps an epoch: 12 steps
    assert first.steps == 12
    checkpoints = workdir / "reused" / "checkpoints"
    assert (checkpoints / "step-0000012").is_dir()
    second, resumed = run(config(1, "auto"))
    assert resumed is None and (second.steps, second.total_steps) == (4, 4)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-0000004"], "the old run's are gone"
    _, resumed = run(config(1, "auto"))  # a retry of the same run resumes its own last checkpoint
    assert resumed == str(checkpoints / "step-0000004")
    with pytest.raises(local.TrainingFailed, match="written by another run"):
        run(config(2, str(checkpoints / "step-0000004")))


def test_next_round_starts_from_the_previous_adapter(workdir: Path, trained: dict[str, Any]) -> None:
    final = trained["events"][-1]
    assert tool_choice.score_on_the_cpu(workdir, final["adapterPath"]) == final["score"]

    def first_loss(**extra: Any) -> float:
        config = cfg.parse_config({**_config(workdir, "round2", maxSteps=1), **extra}, base_dir=workdir)
        stream = io.StringIO()
        local.train(config, writer=local.ProgressWriter(None, stream=stream), handle_sigterm=False)
        return float(next(e["loss"] for e in _events(stream.getvalue()) if e["event"] == "progress"))

    fresh = first_loss()
    continued = first_loss(initAdapter=final["adapterPath"], round=2)
    assert continued < fresh - 0.05, (continued, fresh)


def test_nan_loss_stops_with_diverged(workdir: Path) -> None:
    path = _write_config(workdir, "nan.yaml", _config(workdir, "nan", maxSteps=10))
    proc = _trainer("--config", str(path), env=_env(LIGHTNING_TRAINER_INJECT_NAN_AT_STEP="3"))
    assert proc.returncode == 3
    status = json.loads((workdir / "nan" / "status.json").read_text())
    assert (status["event"], status["reason"], status["exitCode"]) == ("failed", "Diverged", 3)
    assert status["step"] == 2 and "nan" in status["message"]
    assert not (workdir / "nan" / "adapter").exists()


def test_out_of_memory_halves_the_micro_batch_then_gives_up(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = cfg.parse_config(
        _config(workdir, "oom", batchSize=8, maxSteps=2, checkpointSteps=0), base_dir=workdir
    )
    monkeypatch.setenv(local.ENV_INJECT_OOM, "3")
    stream = io.StringIO()
    result = local.train(base, writer=local.ProgressWriter(None, stream=stream), handle_sigterm=False)
    ooms = [e for e in _events(stream.getvalue()) if e["event"] == "oom"]
    assert [(e["microBatchSize"], e["gradientAccumulation"]) for e in ooms] == [(4, 2), (2, 4), (1, 8)]
    assert (result.micro_batch_size, result.gradient_accumulation, result.steps) == (1, 8, 2)

    monkeypatch.setenv(local.ENV_INJECT_OOM, "4")
    failing = base.model_copy(update={"output_dir": workdir / "oom-fail"})
    with pytest.raises(local.TrainingFailed) as info:
        local.train(failing, handle_sigterm=False, writer=local.default_writer(failing, io.StringIO()))
    assert info.value.reason == local.Reason.OUT_OF_MEMORY and info.value.exit_code == 4
    status = json.loads((workdir / "oom-fail" / "status.json").read_text())
    assert (status["reason"], status["exitCode"]) == ("OutOfMemory", 4)
    assert "after 3 halvings" in status["message"]


def test_bad_dataset_fails_before_training_with_line_numbers(workdir: Path) -> None:
    good = (workdir / "train.jsonl").read_text().splitlines()
    bad_lines = [good[0], "{oops", good[1], json.dumps({"messages": [{"role": "user", "content": "hi"}]})]
    _write_jsonl(workdir / "bad.jsonl", [])
    (workdir / "bad.jsonl").write_text("\n".join(bad_lines) + "\n")
    path = _write_config(workdir, "bad.yaml", {**_config(workdir, "bad"), "trainFile": "bad.jsonl"})
    proc = _trainer("--config", str(path))
    assert proc.returncode == 2
    events = _events(proc.stdout)
    assert [e["event"] for e in events] == ["failed"]
    assert events[0]["reason"] == "InvalidDataset" and events[0]["lines"] == [2, 4]
    assert (
        "line 2: not valid JSON" in events[0]["message"]
        and "line 4: no assistant message" in events[0]["message"]
    )
    assert not (workdir / "bad" / "checkpoints").exists()
