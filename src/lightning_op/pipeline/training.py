"""Training jobs on one machine: start evaluation rounds, keep the job in the store, report its status.

``start_training(store, request)`` checks the inputs (base model, dataset files, grader, policy),
records the job as the store record ``("training-job", id)`` and runs ``training.rounds`` over a
``training.backend`` (the local backend: one trainer subprocess per round). While it runs, every
change the trainer reports (progress, losses, per-round scores) is written back to that record, so
``get_training_status`` in another process, the report and the operator see the same job.

With ``wait=False`` the rounds run in a detached driver process (``python -m
lightning_op.pipeline.training --store URL --job ID``) and ``start_training`` returns at once.
``cancel_training`` asks the driver to stop (it SIGTERMs the trainer, which checkpoints first).

Talks to ``store.base`` (records), ``graders`` (to check the grader spec before anything runs) and
``training.backend``/``training.rounds``/``training.config``. Never prints; errors are ``ValueError``
(bad input, message says what to change) or ``store.base.NotFoundError``.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lightning_op.datasets import validate as dataset_validate
from lightning_op.store import base as store_base
from lightning_op.training import backend as backend_mod
from lightning_op.training import rounds as rounds_mod

log = logging.getLogger(__name__)

RECORD_KIND = "training-job"
DATASET_RECORD_KIND = "dataset"
#: the driver writes live progress to the store at most this often (phase changes are written at once)
WRITE_INTERVAL_S = 1.0
#: how often the driver re-reads the record to see whether a cancel was requested
CANCEL_CHECK_INTERVAL_S = 2.0

JobView = dict[str, Any]


@dataclass(frozen=True)
class TrainingRequest:
    """What ``start-training`` was asked. Paths may be relative; they are resolved when the job is made.

    ``hyperparameters`` uses the trainer's camelCase names (``epochs``, ``learningRate``, ``loraRank``,
    ...); the learning rate there is round 1's, decayed by ``lr_decay`` each later round.
    """

    base_model: Path
    train_file: Path
    agent_id: str | None = None
    validation_file: Path | None = None
    eval_file: Path | None = None
    dataset: str | None = None
    dataset_sha256: str | None = None
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    grader: str | Mapping[str, Any] = "tool_selection"
    threshold: float = 0.75
    max_rounds: int = 3
    lr_decay: float = 0.6
    max_new_tokens: int | None = None
    backend: str = "local"
    workdir: Path | None = None
    job_id: str | None = None


def new_job_id(agent_id: str | None) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return f"ft-{agent_id or 'job'}-{stamp}-{secrets.token_hex(2)}"


def default_workdir(store: store_base.EpisodeStore) -> Path:
    """Where jobs keep their files: beside a SQLite store's file, else under the user's data dir."""
    url = getattr(store, "url", "") or ""
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///")).expanduser().resolve().parent / "training"
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "lightning-op" / "training"


def resolve_dataset(store: store_base.EpisodeStore, name: str) -> tuple[Path, Path | None, dict[str, Any]]:
    """The training and validation files of a dataset ``build-dataset`` recorded, and its record."""
    record = store.get_record(DATASET_RECORD_KIND, name)
    if record is None:
        known = sorted(r.name for r in store.list_records(DATASET_RECORD_KIND))
        hint = f" (known: {', '.join(known[:10])})" if known else " (build one with build-dataset)"
        raise ValueError(f"no dataset named {name!r} in the store{hint}")
    path = record.data.get("path")
    if not path:
        raise ValueError(f"dataset {name!r} has no path in its record: rebuild it with build-dataset")
    validation = record.data.get("validationPath")
    for file, key in ((path, "sha256"), (validation, "validationSha256")):
        if file:
            _check_unchanged(name, Path(file), record.data.get(key))
    return Path(path), (Path(validation) if validation else None), dict(record.data)


def _check_unchanged(name: str, path: Path, recorded: Any) -> None:
    """A job trains on the dataset its record describes (and records that sha256): refuse a file
    changed, or gone, since ``build-dataset`` wrote it."""
    try:
        actual = dataset_validate.file_sha256(path)
    except OSError as exc:
        raise ValueError(
            f"dataset {name!r}: {path}: {exc.strerror or exc}; rebuild it with build-dataset"
        ) from None
    if recorded and actual != recorded:
        raise ValueError(
            f"dataset {name!r}: {path} changed since it was built (sha256 {actual[:12]}..., recorded "
            f"{str(recorded)[:12]}...): rebuild it with build-dataset, or train on the file with --train-file"
        )


def _grader_spec(grader: str | Mapping[str, Any]) -> str | dict[str, Any]:
    """The grader as the trainer config carries it: a preset name, or the spec dict (files inlined)."""
    from lightning_op import graders
    from lightning_op.graders import presets, spec

    graders.load_grader_spec(grader)  # raises GraderSpecError (a ValueError) naming the bad field
    if isinstance(grader, Mapping):
        return dict(grader)
    if presets.preset_dict(grader) is not None:
        return grader
    data = spec.load_json_or_yaml_file(Path(grader).expanduser())
    if not isinstance(data, dict):
        raise ValueError(f"grader file {grader}: expected a mapping at the top level")
    return data


def _existing_file(path: Path, what: str) -> Path:
    resolved = path.expanduser().resolve()
    if not resolved.is_file():
        raise ValueError(f"{what} {path} does not exist or is not a file")
    return resolved


def _check_rows(path: Path, what: str) -> None:
    """Every line a chat example the trainer reads, checked before a job is recorded and started."""
    report = dataset_validate.validate_dataset(path)
    if not report.ok:
        raise ValueError(f"{what} {report.summary()}: fix those lines or rebuild with build-dataset")


def trainer_config(request: TrainingRequest, workdir: Path) -> tuple[dict[str, Any], list[str]]:
    """The trainer config every round of the job shares, and warnings for the user. Validated."""
    from lightning_op.training import config as config_mod

    warnings: list[str] = []
    base = request.base_model.expanduser().resolve()
    if not (base / "config.json").is_file():
        raise ValueError(f"base model {request.base_model} is not a model directory (no config.json)")
    train = _existing_file(request.train_file, "training file")
    validation = (
        _existing_file(request.validation_file, "validation file") if request.validation_file else None
    )
    eval_file = _existing_file(request.eval_file, "evaluation file") if request.eval_file else validation
    checked: set[Path] = set()
    for file, what in (
        (train, "training file"),
        (validation, "validation file"),
        (eval_file, "evaluation file"),
    ):
        if file is not None and file not in checked:  # each file read once
            checked.add(file)
            _check_rows(file, what)
    if eval_file is None:
        eval_file = train
        warnings.append(
            "no held-out split (the dataset has no validation file): scores are measured on the training "
            "file; rebuild the dataset with a validation fraction for an honest score"
        )
    evaluation: dict[str, Any] = {"graderSpec": _grader_spec(request.grader), "evalFile": str(eval_file)}
    if request.max_new_tokens is not None:
        evaluation["maxNewTokens"] = request.max_new_tokens
    config: dict[str, Any] = {
        "baseModel": str(base),
        "trainFile": str(train),
        "outputDir": str(workdir),
        "hyperparameters": dict(request.hyperparameters),
        "evaluation": evaluation,
    }
    if validation is not None:
        config["validationFile"] = str(validation)
    try:
        parsed = config_mod.parse_config(config, source="training settings")
    except config_mod.ConfigError as exc:
        raise ValueError(str(exc)) from None
    config["hyperparameters"] = parsed.hyperparameters.model_dump(
        mode="json", by_alias=True, exclude_none=True
    )
    return config, warnings


def _now() -> str:
    return datetime.now(UTC).isoformat()


def create_job(store: store_base.EpisodeStore, request: TrainingRequest) -> JobView:
    """Check the request and record the job (phase Pending). Raises ``ValueError`` on bad input."""
    if request.backend not in backend_mod.BACKENDS:
        raise ValueError(f"unknown backend {request.backend!r}: use one of {', '.join(backend_mod.BACKENDS)}")
    if request.backend == "azureOpenAI":
        # Refused before a job is recorded: a job that can only fail is noise in the store.
        raise ValueError(backend_mod.AZURE_NOT_IMPLEMENTED)
    job_id = request.job_id or new_job_id(request.agent_id)
    workdir = (request.workdir or default_workdir(store)).expanduser().resolve() / job_id
    config, warnings = trainer_config(request, workdir)
    lr = float(config["hyperparameters"]["learningRate"])
    policy = rounds_mod.RoundsPolicy(
        learning_rate=lr,
        threshold=request.threshold,
        max_rounds=request.max_rounds,
        lr_decay=request.lr_decay,
    )
    now = _now()
    view: JobView = {
        "id": job_id,
        "agentId": request.agent_id,
        "backend": request.backend,
        "phase": rounds_mod.JobPhase.PENDING.value,
        "message": "waiting to start",
        "warnings": warnings,
        "created": now,
        "updated": now,
        "finished": None,
        "workdir": str(workdir),
        "dataset": {
            "name": request.dataset,
            "path": config["trainFile"],
            "validationPath": config.get("validationFile"),
            "evalPath": config["evaluation"]["evalFile"],
            "sha256": request.dataset_sha256,
        },
        "config": config,
        "hyperparameters": config["hyperparameters"],
        "evaluation": {
            "grader": request.grader if isinstance(request.grader, str) else "(inline spec)",
            **policy.to_json_dict(),
        },
        "progress": None,
        "baseline": None,
        "rounds": [],
        "result": None,
        "fineTunedModel": None,
        "driver": None,
        "cancelRequested": False,
    }
    store.put_record(RECORD_KIND, job_id, view, expected_revision=0)
    return view


def _policy(view: Mapping[str, Any]) -> rounds_mod.RoundsPolicy:
    ev = view["evaluation"]
    return rounds_mod.RoundsPolicy(
        learning_rate=float(ev["learningRate"]),
        threshold=float(ev["threshold"]),
        max_rounds=int(ev["maxRounds"]),
        lr_decay=float(ev["lrDecay"]),
    )


def _progress(state: rounds_mod.RoundsState) -> dict[str, Any] | None:
    if state.current_round is None:
        return None
    status = state.current
    out: dict[str, Any] = {"round": state.current_round, "maxRounds": state.policy.max_rounds, "percent": 0.0}
    if status is not None:
        out.update(
            percent=round(status.percent, 2),
            epoch=status.epoch,
            epochs=status.epochs,
            step=status.step,
            totalSteps=status.total_steps,
            etaSeconds=status.eta_seconds,
            loss=status.loss,
            validLoss=status.valid_loss,
            learningRate=status.learning_rate,
        )
    return out


def _apply_state(view: JobView, state: rounds_mod.RoundsState) -> None:
    data = state.to_json_dict()
    view["phase"] = data["phase"]
    view["message"] = data["message"]
    view["baseline"] = data["baseline"]
    rounds = list(data["rounds"])
    if state.current_round and state.current is not None:
        # The running round, so status tables and reports show its epochs while it trains.
        live = state.current
        rounds.append(
            {
                "round": state.current_round,
                "learningRate": state.decision.learning_rate if state.decision else None,
                "phase": live.phase.value,
                "score": None,
                "metrics": {},
                "trainLoss": live.train_loss,
                "validLoss": live.valid_loss,
                "checkpoint": None,
                "epochs": list(live.epoch_losses),
                "curve": list(live.curve),
                "running": True,
            }
        )
    view["rounds"] = rounds
    view["progress"] = _progress(state)
    view["decision"] = data["decision"]
    view["result"] = data["result"]
    result = data["result"] or {}
    view["fineTunedModel"] = result.get("fineTunedModel")
    view["updated"] = _now()
    if state.phase.finished:
        view["finished"] = view["updated"]


class _JobWriter:
    """Writes a job's view to the store: phase changes at once, live progress at most once a second."""

    def __init__(self, store: store_base.EpisodeStore, view: JobView, clock: Callable[[], float]) -> None:
        self.store = store
        self.view = view
        self.clock = clock
        self.last_write = 0.0
        self.last_phase = view.get("phase")
        self.last_rounds = 0
        self.last_check = clock()
        self.cancel_requested = bool(view.get("cancelRequested"))

    def write(self, state: rounds_mod.RoundsState) -> None:
        _apply_state(self.view, state)
        now = self.clock()
        changed = self.view["phase"] != self.last_phase or len(state.rounds) != self.last_rounds
        if changed or state.phase.finished or now - self.last_write >= WRITE_INTERVAL_S:
            self._put()
            self.last_write, self.last_phase, self.last_rounds = now, self.view["phase"], len(state.rounds)

    def _put(self) -> None:
        current = self.store.get_record(RECORD_KIND, self.view["id"])
        if current is not None and current.data.get("cancelRequested"):
            self.cancel_requested = True
        self.view["cancelRequested"] = self.cancel_requested
        try:
            self.store.put_record(RECORD_KIND, self.view["id"], self.view)
        except store_base.StoreUnavailableError as exc:
            log.warning(
                "job %s: cannot write progress to the store (%s); retrying at the next update",
                self.view["id"],
                exc,
            )

    def should_cancel(self) -> bool:
        now = self.clock()
        if not self.cancel_requested and now - self.last_check >= CANCEL_CHECK_INTERVAL_S:
            self.last_check = now
            record = self.store.get_record(RECORD_KIND, self.view["id"])
            self.cancel_requested = bool(record and record.data.get("cancelRequested"))
        return self.cancel_requested


def _load(store: store_base.EpisodeStore, job_id: str) -> store_base.Record:
    record = store.get_record(RECORD_KIND, job_id)
    if record is None:
        known = sorted((r.name for r in store.list_records(RECORD_KIND)), reverse=True)
        hint = f" (recent: {', '.join(known[:5])})" if known else " (start one with start-training)"
        raise store_base.NotFoundError(f"no training job {job_id!r} in the store {store.url}{hint}")
    return record


def run_job(
    store: store_base.EpisodeStore,
    job_id: str,
    *,
    backend: backend_mod.TrainingBackend | None = None,
    on_update: Callable[[JobView], None] | None = None,
    poll_interval: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
) -> JobView:
    """Run a recorded job's rounds to the end in this process, keeping the record current.

    A ``KeyboardInterrupt`` stops the running round (the trainer checkpoints) and records the job
    as Cancelled before it propagates.
    """
    record = _load(store, job_id)
    view: JobView = dict(record.data)
    if rounds_mod.JobPhase(view["phase"]).finished:
        return view
    chosen = backend if backend is not None else backend_mod.make_backend(view.get("backend", "local"))
    plan = rounds_mod.RoundsPlan(
        job_id=job_id, config=view["config"], workdir=Path(view["workdir"]), policy=_policy(view)
    )
    view["driver"] = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now()}
    writer = _JobWriter(store, view, clock)

    def update(state: rounds_mod.RoundsState) -> None:
        writer.write(state)
        if on_update is not None:
            on_update(writer.view)

    try:
        state = rounds_mod.run_rounds(
            chosen, plan, on_update=update, should_cancel=writer.should_cancel, poll_interval=poll_interval
        )
    except KeyboardInterrupt:
        if isinstance(chosen, backend_mod.LocalBackend):
            chosen.close()
        view.update(
            phase=rounds_mod.JobPhase.CANCELLED.value,
            message="interrupted",
            progress=None,
            updated=_now(),
            finished=_now(),
        )
        store.put_record(RECORD_KIND, job_id, view)
        raise
    except backend_mod.BackendError as exc:
        view.update(
            phase=rounds_mod.JobPhase.FAILED.value,
            message=str(exc),
            progress=None,
            updated=_now(),
            finished=_now(),
        )
        store.put_record(RECORD_KIND, job_id, view)
        return view
    writer.write(state)
    return writer.view


def spawn_driver(store_url: str, job_id: str, log_path: Path) -> int:
    """Run ``run_job`` in a detached process (``start-training --no-wait``); returns its pid."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "lightning_op.pipeline.training", "--store", store_url, "--job", job_id],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
        )
    return process.pid


def start_training(
    store: store_base.EpisodeStore,
    request: TrainingRequest,
    *,
    wait: bool = True,
    backend: backend_mod.TrainingBackend | None = None,
    on_update: Callable[[JobView], None] | None = None,
    poll_interval: float = 0.5,
) -> JobView:
    """Create the job and run it (``wait``), or hand it to a detached driver and return at once."""
    view = create_job(store, request)
    if wait:
        return run_job(store, view["id"], backend=backend, on_update=on_update, poll_interval=poll_interval)
    pid = spawn_driver(store.url, view["id"], Path(view["workdir"]) / "driver.log")
    record = _load(store, view["id"])
    data = dict(record.data)
    if data.get("driver") is None:
        data["driver"] = {"pid": pid, "host": socket.gethostname(), "started": _now()}
        try:
            store.put_record(RECORD_KIND, view["id"], data, expected_revision=record.revision)
        except store_base.ConflictError:
            pass  # the driver wrote first; its record has the pid
    return data


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def get_training_status(store: store_base.EpisodeStore, job_id: str) -> JobView:
    """The job as recorded. A job whose driver on this host has died is reported Failed (not written)."""
    view = dict(_load(store, job_id).data)
    phase = rounds_mod.JobPhase(view.get("phase", "Pending"))
    driver = view.get("driver") or {}
    pid = driver.get("pid")
    if (
        not phase.finished
        and isinstance(pid, int)
        and driver.get("host") == socket.gethostname()
        and not _pid_alive(pid)
    ):
        view["phase"] = rounds_mod.JobPhase.FAILED.value
        view["message"] = (
            f"the training driver (pid {pid}) stopped without finishing the job; see "
            f"{Path(view['workdir']) / 'driver.log'} and start the job again"
        )
        view["progress"] = None
    return view


def cancel_training(store: store_base.EpisodeStore, job_id: str) -> JobView:
    """Ask the job's driver to stop; it cancels the running round and records the job as Cancelled."""
    record = _load(store, job_id)
    data = dict(record.data)
    if not rounds_mod.JobPhase(data["phase"]).finished:
        data["cancelRequested"] = True
        store.put_record(RECORD_KIND, job_id, data)
    return data


def list_jobs(store: store_base.EpisodeStore, agent_id: str | None = None) -> list[JobView]:
    """Every recorded job (newest first), optionally one agent's."""
    jobs = [dict(r.data) for r in store.list_records(RECORD_KIND)]
    if agent_id is not None:
        jobs = [j for j in jobs if j.get("agentId") == agent_id]
    return sorted(jobs, key=lambda j: str(j.get("created", "")), reverse=True)


def main(argv: list[str] | None = None) -> int:
    """The detached driver: ``python -m lightning_op.pipeline.training --store URL --job ID``."""
    from lightning_op import store as store_mod

    parser = argparse.ArgumentParser(prog="python -m lightning_op.pipeline.training")
    parser.add_argument("--store", required=True, help="the store URL the job is recorded in")
    parser.add_argument("--job", required=True, help="the job id start-training recorded")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    store = store_mod.open_store(args.store)
    try:
        view = run_job(store, args.job)
    finally:
        store.close()
    log.info("job %s finished: %s (%s)", args.job, view["phase"], view.get("message"))
    return 0 if view["phase"] == rounds_mod.JobPhase.SUCCEEDED.value else 1


if __name__ == "__main__":
    sys.exit(main())
