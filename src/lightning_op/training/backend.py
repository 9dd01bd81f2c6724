"""Training backends behind one protocol: submit a round, poll its status and progress, cancel it.

``rounds`` drives any ``TrainingBackend``; ``pipeline.training`` picks the backend for a job. Two live
here:

- ``LocalBackend`` runs each round as a subprocess, ``python -m lightning_op.trainer --config FILE``
  (or ``... evaluate`` for a baseline score), and follows the trainer's JSON-lines protocol on its
  stdout (``started``, ``progress``, ``checkpoint``, ``completed``/``failed``; see ``training.local``).
  Stdout goes to a file in the round's directory, so polling never blocks and nothing deadlocks on a
  full pipe.
- ``AzureOpenAIBackend``: a placeholder that says it is not implemented yet.

The operator will put its Job-based runner behind the same protocol (submit creates a Job, poll reads
the status file the trainer writes, cancel deletes the Job). Nothing here imports torch.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable

log = logging.getLogger(__name__)

#: the module the local backend runs, as the trainer image's entrypoint does
TRAINER_MODULE = "lightning_op.trainer"
#: loss points kept per round for the report's curves (older points are thinned, never the last)
MAX_CURVE_POINTS = 400
STDERR_TAIL_CHARS = 2000
CANCEL_GRACE_S = 30.0


class BackendError(RuntimeError):
    """A backend cannot do what was asked (unknown round, not implemented, cannot start)."""


class RoundPhase(enum.StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"

    @property
    def finished(self) -> bool:
        return self in (RoundPhase.SUCCEEDED, RoundPhase.FAILED, RoundPhase.CANCELLED)


@dataclass(frozen=True)
class RoundSpec:
    """One unit of work for a backend: a training round, or (``round`` 0) a baseline evaluation.

    ``config`` is the trainer config shared by every round of a job, camelCase as in
    ``training.config`` (``baseModel``, ``trainFile``, ``validationFile``, ``hyperparameters``,
    ``evaluation``); the backend sets this round's ``round``, ``outputDir``,
    ``hyperparameters.learningRate`` and ``initAdapter`` on top of it.
    """

    job_id: str
    round: int
    config: Mapping[str, Any]
    output_dir: Path
    learning_rate: float | None = None
    init_adapter: str | None = None

    @property
    def evaluate_only(self) -> bool:
        return self.round == 0

    def trainer_config(self) -> dict[str, Any]:
        """The config file this round's trainer reads."""
        config: dict[str, Any] = json.loads(json.dumps(dict(self.config)))
        config["outputDir"] = str(self.output_dir)
        config["statusFile"] = str(self.output_dir / "status.json")
        config.pop("initAdapter", None)
        config.pop("resumeFrom", None)
        evaluation = config.get("evaluation")
        if isinstance(evaluation, dict) and evaluation.get("evalFile"):
            # Relative to the config file's directory, which the trainer resolves it against: the
            # same file either way, and immune to config.py dropping an absolute evalFile (reported).
            evaluation["evalFile"] = os.path.relpath(evaluation["evalFile"], self.output_dir)
        if self.evaluate_only:
            return config
        config["round"] = self.round
        hyper = dict(config.get("hyperparameters") or {})
        if self.learning_rate is not None:
            hyper["learningRate"] = self.learning_rate
        config["hyperparameters"] = hyper
        if self.init_adapter:
            config["initAdapter"] = self.init_adapter
        return config


@dataclass
class RoundStatus:
    """What a backend knows about one round: phase, live progress, losses, score, the adapter."""

    phase: RoundPhase = RoundPhase.PENDING
    percent: float = 0.0
    epoch: int | None = None
    epochs: int | None = None
    step: int | None = None
    total_steps: int | None = None
    eta_seconds: float | None = None
    loss: float | None = None
    train_loss: float | None = None
    valid_loss: float | None = None
    learning_rate: float | None = None
    score: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    adapter_path: str | None = None
    checkpoint_path: str | None = None
    #: why it stopped (the trainer's ``reason``: Completed, Diverged, OutOfMemory, ...)
    reason: str | None = None
    message: str | None = None
    exit_code: int | None = None
    #: (step, loss) points for loss curves, at most ``MAX_CURVE_POINTS``
    curve: list[dict[str, float]] = field(default_factory=list)
    #: one entry per finished epoch: ``{"epoch", "trainLoss", "validLoss"}``
    epoch_losses: list[dict[str, float | None]] = field(default_factory=list)
    #: the evaluation's per-example results, when the trainer reported them
    examples: list[dict[str, Any]] = field(default_factory=list)

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase.value,
            "percent": round(self.percent, 2),
            "epoch": self.epoch,
            "epochs": self.epochs,
            "step": self.step,
            "totalSteps": self.total_steps,
            "etaSeconds": self.eta_seconds,
            "loss": self.loss,
            "trainLoss": self.train_loss,
            "validLoss": self.valid_loss,
            "learningRate": self.learning_rate,
            "score": self.score,
            "metrics": dict(self.metrics),
            "adapterPath": self.adapter_path,
            "checkpointPath": self.checkpoint_path,
            "reason": self.reason,
            "message": self.message,
            "exitCode": self.exit_code,
        }


@runtime_checkable
class TrainingBackend(Protocol):
    """Runs rounds somewhere (a subprocess, a Kubernetes Job, a cloud fine-tuning service)."""

    #: ``local`` or ``azureOpenAI``, as in a FineTuneJob's ``spec.backend``
    name: str

    def submit(self, spec: RoundSpec) -> str:
        """Start the round; returns a handle for ``poll``/``cancel``. Raises ``BackendError``."""

    def poll(self, handle: str) -> RoundStatus:
        """The round's status now; never blocks for long."""

    def cancel(self, handle: str) -> None:
        """Stop the round (a trainer checkpoints first); ``poll`` then reports ``Cancelled``."""


# ------------------------------------------------------------------------------------ event parsing


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def _metrics(event: Mapping[str, Any]) -> dict[str, float]:
    for key in ("metrics", "perMetric"):
        value = event.get(key)
        if isinstance(value, Mapping):
            return {str(k): float(v) for k, v in value.items() if _float(v) is not None}
    evaluation = event.get("evaluation")
    if isinstance(evaluation, Mapping):
        return _metrics(evaluation)
    return {}


def _thin(curve: list[dict[str, float]]) -> None:
    """Drop every other point except the last, in place, once the curve is over its cap."""
    if len(curve) > MAX_CURVE_POINTS:
        last = curve[-1]
        del curve[::2]
        if curve[-1] is not last:
            curve.append(last)


def apply_event(status: RoundStatus, event: Mapping[str, Any]) -> None:
    """Fold one line of the trainer's JSON-lines protocol into ``status``.

    Unknown events and fields are ignored, so a newer trainer still works with an older reader.
    """
    kind = event.get("event")
    if kind == "started":
        status.phase = RoundPhase.RUNNING
        status.total_steps = _int(event.get("totalSteps")) or status.total_steps
        status.epochs = _int(event.get("epochs")) or status.epochs
    elif kind == "progress":
        status.phase = RoundPhase.RUNNING
        status.percent = _float(event.get("percent")) or status.percent
        status.epoch = _int(event.get("epoch")) or status.epoch
        status.step = _int(event.get("step")) if event.get("step") is not None else status.step
        status.total_steps = _int(event.get("totalSteps")) or status.total_steps
        status.eta_seconds = _float(event.get("etaSeconds"))
        loss = _float(event.get("loss"))
        if loss is not None:
            status.loss = loss
            status.curve.append({"step": float(status.step or 0), "loss": loss})
            _thin(status.curve)
        valid = _float(event.get("validLoss"))
        if valid is not None:
            status.valid_loss = valid
        lr = _float(event.get("learningRate"))
        if lr is not None:
            status.learning_rate = lr
        if event.get("epochEnd"):
            train = _float(event.get("trainLoss"))
            status.train_loss = train if train is not None else status.train_loss
            status.epoch_losses.append(
                {
                    "epoch": float(_int(event.get("epoch")) or len(status.epoch_losses) + 1),
                    "trainLoss": train,
                    "validLoss": valid,
                }
            )
    elif kind == "checkpoint":
        path = event.get("checkpointPath")
        status.checkpoint_path = str(path) if path else status.checkpoint_path
    elif kind in ("completed", "failed"):
        status.reason = str(event.get("reason") or "") or None
        status.message = str(event.get("message") or "") or status.message
        train = _float(event.get("trainLoss"))
        status.train_loss = train if train is not None else status.train_loss
        valid = _float(event.get("validLoss"))
        status.valid_loss = valid if valid is not None else status.valid_loss
        for key, attr in (("adapterPath", "adapter_path"), ("checkpointPath", "checkpoint_path")):
            if event.get(key):
                setattr(status, attr, str(event[key]))
        exit_code = _int(event.get("exitCode"))
        status.exit_code = exit_code if exit_code is not None else status.exit_code
        if kind == "completed":
            status.percent = 100.0
    score = _float(event.get("score"))
    if score is not None:
        status.score = score
    metrics = _metrics(event)
    if metrics:
        status.metrics = metrics
    examples = event.get("perExample")
    if isinstance(examples, list):
        status.examples = [dict(e) for e in examples if isinstance(e, Mapping)]


# ---------------------------------------------------------------------------------------- local


@dataclass
class _LocalRound:
    spec: RoundSpec
    process: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path
    status: RoundStatus = field(default_factory=RoundStatus)
    offset: int = 0
    partial: bytes = b""
    cancelled: bool = False
    stdout: IO[bytes] | None = None
    stderr: IO[bytes] | None = None


class LocalBackend:
    """Each round is a ``python -m lightning_op.trainer`` subprocess on this machine.

    Files in the round's ``output_dir``: ``trainer-config.json`` (what it was asked), ``trainer.log``
    (its stdout: the JSON-lines protocol), ``trainer.err`` (stderr), and what the trainer writes itself
    (``status.json``, ``progress.jsonl``, ``checkpoints/``, ``adapter/``).
    """

    name = "local"

    def __init__(self, *, python: str | None = None, env: Mapping[str, str] | None = None) -> None:
        self.python = python or sys.executable
        self.env = dict(env) if env is not None else None
        self._rounds: dict[str, _LocalRound] = {}

    def command(self, spec: RoundSpec, config_path: Path) -> list[str]:
        cmd = [self.python, "-m", TRAINER_MODULE]
        if spec.evaluate_only:
            cmd += ["evaluate", "--config", str(config_path)]
            if spec.init_adapter:
                cmd += ["--adapter", spec.init_adapter]
            return cmd
        return [*cmd, "--config", str(config_path)]

    def submit(self, spec: RoundSpec) -> str:
        out = spec.output_dir
        out.mkdir(parents=True, exist_ok=True)
        handle = str(out)
        if handle in self._rounds and not self._rounds[handle].status.phase.finished:
            raise BackendError(f"round {spec.round} of job {spec.job_id} is already running in {out}")
        config_path = out / "trainer-config.json"
        config_path.write_text(json.dumps(spec.trainer_config(), indent=2) + "\n", encoding="utf-8")
        for stale in ("status.json", "progress.jsonl"):
            (out / stale).unlink(missing_ok=True)
        stdout_path, stderr_path = out / "trainer.log", out / "trainer.err"
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        stdout = stdout_path.open("wb")
        stderr = stderr_path.open("wb")
        try:
            # A session of its own: Ctrl-C on the CLI reaches us, and we stop the trainer with SIGTERM
            # so it checkpoints instead of dying mid-write.
            process = subprocess.Popen(
                self.command(spec, config_path),
                stdout=stdout,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                cwd=out,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            stdout.close()
            stderr.close()
            raise BackendError(
                f"cannot start the trainer ({self.python} -m {TRAINER_MODULE}): {exc}"
            ) from exc
        log.info("round %d of job %s: trainer pid %d in %s", spec.round, spec.job_id, process.pid, out)
        run = _LocalRound(spec, process, stdout_path, stderr_path, stdout=stdout, stderr=stderr)
        run.status.phase = RoundPhase.RUNNING
        self._rounds[handle] = run
        return handle

    def _run(self, handle: str) -> _LocalRound:
        run = self._rounds.get(handle)
        if run is None:
            raise BackendError(f"no round with handle {handle!r} was submitted to this backend")
        return run

    def _read_events(self, run: _LocalRound) -> None:
        try:
            with run.stdout_path.open("rb") as handle:
                handle.seek(run.offset)
                chunk = handle.read()
        except OSError:
            return
        run.offset += len(chunk)
        data = run.partial + chunk
        lines = data.split(b"\n")
        run.partial = lines.pop()
        for line in lines:
            self._apply_line(run, line)

    @staticmethod
    def _apply_line(run: _LocalRound, line: bytes) -> None:
        text = line.strip()
        if not text.startswith(b"{"):
            return
        try:
            event = json.loads(text)
        except ValueError:
            log.debug("round %d: skipping a stdout line that is not JSON", run.spec.round)
            return
        if isinstance(event, dict):
            apply_event(run.status, event)

    def poll(self, handle: str) -> RoundStatus:
        run = self._run(handle)
        if run.status.phase.finished:
            return run.status
        self._read_events(run)
        code = run.process.poll()
        if code is None:
            if run.status.phase is RoundPhase.PENDING:
                run.status.phase = RoundPhase.RUNNING
            return run.status
        self._read_events(run)
        if run.partial:
            self._apply_line(run, run.partial)
            run.partial = b""
        self._close(run)
        status = run.status
        status.exit_code = code
        failed_event = status.reason not in (None, "Completed")
        if run.cancelled:
            status.phase = RoundPhase.CANCELLED
            status.reason = "Cancelled"
            status.message = status.message or "cancelled before it finished"
        elif code == 0 and run.spec.evaluate_only and status.score is not None:
            status.phase = RoundPhase.SUCCEEDED
            status.reason = "Completed"
        elif code == 0 and not run.spec.evaluate_only and status.reason == "Completed":
            status.phase = RoundPhase.SUCCEEDED
        else:
            status.phase = RoundPhase.FAILED
            if not failed_event:
                status.reason = "Error"
                what = (
                    "without reporting a score" if run.spec.evaluate_only else "without reporting 'completed'"
                )
                why = f"with status {code}" if code else what
                status.message = f"the trainer exited {why}" + self._stderr_tail(run)
        return status

    @staticmethod
    def _stderr_tail(run: _LocalRound) -> str:
        try:
            text = run.stderr_path.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            return ""
        if not text:
            return ""
        last = [line for line in text.splitlines() if line.strip()][-3:]
        return ": " + " | ".join(last)[-STDERR_TAIL_CHARS:]

    @staticmethod
    def _close(run: _LocalRound) -> None:
        for stream in (run.stdout, run.stderr):
            if stream is not None:
                stream.close()
        run.stdout = run.stderr = None

    def cancel(self, handle: str) -> None:
        run = self._run(handle)
        if run.process.poll() is not None:
            run.cancelled = run.cancelled or not run.status.phase.finished
            return
        run.cancelled = True
        try:
            run.process.send_signal(signal.SIGTERM)
            run.process.wait(timeout=CANCEL_GRACE_S)
        except subprocess.TimeoutExpired:
            log.warning(
                "trainer pid %d ignored SIGTERM for %.0fs; killing it", run.process.pid, CANCEL_GRACE_S
            )
            run.process.kill()
            run.process.wait()
        except ProcessLookupError:
            pass

    def close(self) -> None:
        """Stop every round still running (used when the driver itself is stopped)."""
        for handle, run in list(self._rounds.items()):
            if run.process.poll() is None:
                self.cancel(handle)
            self._close(run)


AZURE_NOT_IMPLEMENTED = (
    "the azureOpenAI backend is not implemented yet: use backend 'local' "
    "(start-training runs the local trainer)"
)


class AzureOpenAIBackend:
    """Azure OpenAI fine-tuning (upload the dataset, create a job, poll its events). Not built yet."""

    name = "azureOpenAI"

    def _not_implemented(self) -> BackendError:
        return BackendError(AZURE_NOT_IMPLEMENTED)

    def submit(self, spec: RoundSpec) -> str:
        raise self._not_implemented()

    def poll(self, handle: str) -> RoundStatus:
        raise self._not_implemented()

    def cancel(self, handle: str) -> None:
        raise self._not_implemented()


BACKENDS = ("local", "azureOpenAI")


def make_backend(name: str) -> TrainingBackend:
    """The backend a job's ``backend`` field names; ``BackendError`` for an unknown name."""
    if name == "local":
        return LocalBackend()
    if name == "azureOpenAI":
        return AzureOpenAIBackend()
    raise BackendError(f"unknown training backend {name!r}: use one of {', '.join(BACKENDS)}")
