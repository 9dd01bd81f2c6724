"""The FineTuneJob state machine: from the status and what the controller observed, the next status
and the one thing to do.

The status *is* the state (an operator restart re-reads it and carries on); every action the
controller takes for a step is idempotent (a dataset rebuilt from the same episodes, a Job created
with create-or-adopt under a deterministic name), so running a step twice never makes a second Job.
The controller asks ``need(spec, status)`` what to observe, gathers it (the gate's RewardLabeling,
a dataset build, the current round's Job and trainer output), then ``decide(...)`` returns a
``Step``: the new status, at most one child action (``create_round``, ``suspend_job``,
``resume_job``) and the phase ``transition`` to announce as an Event.

Phases (``api.finetune.FineTunePhase``):

- ``WaitingForGate`` until ``spec.gate.labelingRef``'s verdict is GO (or WARNING with
  ``allowWarning``). Once passed, the gate is not checked again.
- ``BuildingDataset``: the snapshot is written to the model volume; too few episodes fail the job
  with a message that says what to change.
- ``Evaluating`` while a Job only scores (round 0, the base model's baseline) or a round's trainer
  reports that it is scoring its adapter; ``Training`` while a round trains. Round k trains from
  round k-1's adapter at ``learningRate * lrDecay**(k-1)``; ``training.rounds.next_round_decision``
  (the CLI's rule) decides whether another round runs.
- ``Succeeded`` when a round meets ``evaluation.threshold`` (or, with no evaluation, when the one
  round trained); ``fineTunedModel`` is the best round's adapter.
- ``Failed`` with the reason in the ``Failed`` condition: ``InvalidSpec``, ``BackendNotImplemented``,
  ``NotEnoughEpisodes``, the trainer's own reason (``Diverged``, ``OutOfMemory``, ...), the Job's
  (``DeadlineExceeded``, ``BackoffLimitExceeded``), or ``MaxRoundsReached``: every round ran and none
  met the threshold. That last one is a failure, not a success, so nothing downstream promotes a
  model below the bar; ``result``, ``rounds`` and the best round's checkpoint stay in status for a
  person to judge, but ``fineTunedModel`` is set only on ``Succeeded``.
- ``Suspended`` while ``spec.suspend`` is true: the running round's Job is suspended
  (``Job.spec.suspend``; its pod is stopped, the trainer checkpoints on SIGTERM) and resumed later,
  when the trainer continues from its checkpoint (``resumeFrom: auto``).

A Failed job whose failure came before any trainer Job ran (bad spec, not enough episodes) starts
over when its spec changes (a new ``metadata.generation``); after Jobs ran, Failed and Succeeded are
final, as for a Kubernetes Job: create a new FineTuneJob to train again.

Progress comes from the trainer's JSON lines in the pod log (see ``parse_trainer_output``); the
trainer's status file on the model volume is the durable copy when the pod is gone.

Talks to ``api`` (spec and status models, conditions), ``training`` (rounds decision, trainer
config, the JSON-lines protocol), ``datasets`` and ``store`` (the snapshot); never to Kubernetes.
"""

from __future__ import annotations

import enum
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from lightning_op import graders
from lightning_op.api import conditions as cond
from lightning_op.api import finetune as ft
from lightning_op.api.common import FieldProblem, SpecError
from lightning_op.api.conditions import ConditionStatus, ConditionType, Reason
from lightning_op.datasets import build as dataset_build
from lightning_op.store import base as store_base
from lightning_op.training import backend as backend_mod
from lightning_op.training import config as trainer_config_mod
from lightning_op.training import rounds as rounds_mod

log = logging.getLogger(__name__)

#: where the model volume is mounted in trainer pods (``manifests.trainer_job`` mounts it there)
TRAINER_MODELS_MOUNT = "/models"
#: everything a FineTuneJob writes on the model volume lives under this directory
VOLUME_ROOT = "finetunejobs"
TRAINER_CONFIG_FILE = "trainer.yaml"
BASELINE_RESULT_FILE = "evaluation-baseline.json"
ROUND_RESULT_FILE = "evaluation.json"
STATUS_FILE = "status.json"
#: a Job that succeeded but whose result cannot be read (pod log and status file gone) fails after this
RESULT_GRACE = timedelta(minutes=5)

TERMINAL_PHASES = frozenset({ft.FineTunePhase.SUCCEEDED, ft.FineTunePhase.FAILED})
#: trainer lines that end a run (``evaluated``: the ``evaluate`` command's only line)
FINAL_EVENTS = frozenset({"completed", "failed", "evaluated"})


class FailureReason(enum.StrEnum):
    """Reasons of the ``Failed`` condition beyond ``api.conditions.Reason``: the trainer's and the Job's."""

    DIVERGED = "Diverged"
    OUT_OF_MEMORY = "OutOfMemory"
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    RESULT_UNAVAILABLE = "ResultUnavailable"


# ------------------------------------------------------------------------------------ volume layout


#: of a FineTuneJob's name in its directory on the model volume
MAX_DIR_NAME_CHARS = 200


@dataclass(frozen=True)
class VolumeLayout:
    """Where one FineTuneJob's files live on the model volume, as paths relative to its root.

    The directory carries a prefix of the object's uid, so a FineTuneJob deleted and created again
    under the same name never resumes from the old one's checkpoints.
    """

    namespace: str
    name: str
    uid: str

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> VolumeLayout:
        meta = body.get("metadata") or {}
        return cls(str(meta.get("namespace") or ""), str(meta.get("name") or ""), str(meta.get("uid") or ""))

    @property
    def root(self) -> PurePosixPath:
        # a name is up to 253 characters, a directory name 255 bytes: a long one is cut (the uid
        # prefix keeps it unique)
        return PurePosixPath(VOLUME_ROOT, self.namespace, f"{self.name[:MAX_DIR_NAME_CHARS]}-{self.uid[:8]}")

    @property
    def dataset(self) -> PurePosixPath:
        return self.root / "dataset" / "train.jsonl"

    @property
    def snapshot(self) -> PurePosixPath:
        """The dataset's statistics, written once it is built (``datasets.build.DatasetStats``)."""
        return self.root / "dataset" / "snapshot.json"

    @property
    def validation(self) -> PurePosixPath:
        path = dataset_build.validation_path_for(Path(str(self.dataset)))
        return PurePosixPath(path.as_posix())

    def round_dir(self, round_number: int) -> PurePosixPath:
        return self.root / ("baseline" if round_number == 0 else f"round-{round_number}")

    def config_file(self, round_number: int) -> PurePosixPath:
        return self.round_dir(round_number) / TRAINER_CONFIG_FILE

    def result_file(self, round_number: int) -> PurePosixPath:
        name = BASELINE_RESULT_FILE if round_number == 0 else ROUND_RESULT_FILE
        return self.round_dir(round_number) / name

    def status_file(self, round_number: int) -> PurePosixPath:
        return self.round_dir(round_number) / STATUS_FILE

    @staticmethod
    def in_trainer(relative: PurePosixPath) -> str:
        """The path a trainer pod sees (the volume mounted at ``/models``)."""
        return str(PurePosixPath(TRAINER_MODELS_MOUNT) / relative)

    @staticmethod
    def in_operator(models_dir: Path, relative: PurePosixPath) -> Path:
        """The path the operator sees (the same volume mounted at ``--models-dir``)."""
        return models_dir / Path(*relative.parts)


def base_model_path(base_model: str) -> str:
    """``spec.baseModel`` as the trainer sees it: relative paths are on the model volume."""
    return base_model if base_model.startswith("/") else str(PurePosixPath(TRAINER_MODELS_MOUNT) / base_model)


# ------------------------------------------------------------------------------------ observations


class GateState(enum.StrEnum):
    OPEN = "Open"
    WAITING = "Waiting"
    BLOCKED = "Blocked"
    NOT_FOUND = "NotFound"


@dataclass(frozen=True)
class GateObservation:
    state: GateState
    message: str


def gate_state(spec: ft.FineTuneJobSpec, labeling: Mapping[str, Any] | None) -> GateObservation:
    """Whether the RewardLabeling ``labeling`` (its object body, or None when absent) opens the gate."""
    ref = spec.gate.labeling_ref
    name = ref.name if ref is not None else "?"
    if labeling is None:
        return GateObservation(GateState.NOT_FOUND, f"RewardLabeling {name} not found; waiting for it")
    status = labeling.get("status") or {}
    generation = (labeling.get("metadata") or {}).get("generation")
    if generation is not None and status.get("observedGeneration") != generation:
        return GateObservation(
            GateState.WAITING,
            f"waiting for RewardLabeling {name} to label with its changed spec (generation {generation})",
        )
    verdict = status.get("verdict")
    allowed = {"GO", "WARNING"} if spec.gate.allow_warning else {"GO"}
    if verdict in allowed:
        return GateObservation(GateState.OPEN, f"RewardLabeling {name} verdict is {verdict}")
    if verdict is None:
        phase = status.get("phase") or "Pending"
        return GateObservation(
            GateState.WAITING, f"waiting for RewardLabeling {name} to finish its dry run (phase {phase})"
        )
    hint = (
        ""
        if spec.gate.allow_warning or verdict != "WARNING"
        else " (set spec.gate.allowWarning to accept it)"
    )
    return GateObservation(
        GateState.BLOCKED, f"RewardLabeling {name} verdict is {verdict}; training waits for GO{hint}"
    )


class JobState(enum.StrEnum):
    MISSING = "Missing"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


@dataclass(frozen=True)
class JobView:
    """The parts of a ``batch/v1`` Job's status the flow needs."""

    state: JobState
    reason: str | None = None
    message: str | None = None
    finished_at: datetime | None = None
    #: ``spec.suspend`` is set: asked to suspend, whether or not its pods are gone yet
    suspend_requested: bool = False


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def job_view(job: Mapping[str, Any] | None) -> JobView:
    """Read a Job's state from its conditions (Complete, Failed, Suspended) and counters."""
    if job is None:
        return JobView(JobState.MISSING)
    status = job.get("status") or {}
    for item in status.get("conditions") or []:
        if item.get("status") != "True":
            continue
        kind = item.get("type")
        at = _parse_time(item.get("lastTransitionTime"))
        if kind == "Complete":
            return JobView(JobState.SUCCEEDED, finished_at=_parse_time(status.get("completionTime")) or at)
        if kind == "Failed":
            return JobView(JobState.FAILED, item.get("reason"), item.get("message"), at)
    for item in status.get("conditions") or []:
        if item.get("type") == "Suspended" and item.get("status") == "True":
            return JobView(JobState.SUSPENDED)
    suspend = bool((job.get("spec") or {}).get("suspend"))
    if suspend and not status.get("active"):
        return JobView(JobState.SUSPENDED, suspend_requested=True)
    return JobView(JobState.RUNNING, suspend_requested=suspend)


@dataclass
class TrainerOutput:
    """The trainer's JSON lines folded together: live progress, and the final line once there is one."""

    status: backend_mod.RoundStatus = field(default_factory=backend_mod.RoundStatus)
    last_event: str | None = None
    final: dict[str, Any] | None = None
    lines: int = 0

    def apply(self, event: Mapping[str, Any]) -> None:
        kind = event.get("event")
        if not isinstance(kind, str):
            return
        self.lines += 1
        self.last_event = kind
        backend_mod.apply_event(self.status, event)
        if kind in FINAL_EVENTS:
            self.final = dict(event)


def parse_trainer_output(text: str | Iterable[str]) -> TrainerOutput:
    """Fold the JSON lines in a pod log tail (or a status file); other lines (logs) are skipped."""
    output = TrainerOutput()
    lines = text.splitlines() if isinstance(text, str) else text
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            output.apply(event)
    return output


def newest_pod(pods: Sequence[Mapping[str, Any]], job_uid: str | None = None) -> Mapping[str, Any] | None:
    """The most recently created pod of a Job (a retried Job has several). With ``job_uid``, pods
    whose controller is another Job are skipped: the ``job-name`` label they are listed by is shared
    with a deleted Job of the same name whose pods the garbage collector has not removed yet."""
    if job_uid:
        pods = [p for p in pods if _controller_uid(p) in (None, job_uid)]
    if not pods:
        return None
    return max(
        pods, key=lambda p: ((p.get("metadata") or {}).get("creationTimestamp") or "", p["metadata"]["name"])
    )


@dataclass(frozen=True)
class PodProblem:
    """Why a trainer pod does not run: Kubernetes' own reason (``Unschedulable``,
    ``ImagePullBackOff``...) and a message naming the pod and what Kubernetes said."""

    reason: str
    message: str


#: container waiting reasons that last until a person acts (an image name or pull secret, a missing
#: Secret or ConfigMap, a command that crashes), unlike ContainerCreating or PodInitializing
STUCK_WAITING_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
        "CrashLoopBackOff",
    }
)
#: ``Ready`` reasons of a FineTuneJob that wait on something a person fixes (a Warning Event each)
WAITING_REASONS = frozenset({Reason.QUOTA_EXCEEDED, "Unschedulable", "FailedCreate", *STUCK_WAITING_REASONS})


def pod_refused(job_name: str, message: str) -> PodProblem:
    """The Job controller cannot create the round's pod: ``message`` is its FailedCreate Event's."""
    return PodProblem("FailedCreate", f"Job {job_name} cannot create its trainer pod: {message}")


def pod_problem(pod: Mapping[str, Any] | None) -> PodProblem | None:
    """Why ``pod`` (a round's newest trainer pod) does not run, when it will not without a person:
    no node fits it (the GPUs, nodeSelector or tolerations it asks for; the scheduler's message says
    which), or one of its containers is stuck waiting (``STUCK_WAITING_REASONS``). None otherwise,
    a pod still being created included."""
    if pod is None:
        return None
    name = (pod.get("metadata") or {}).get("name", "?")
    status = pod.get("status") or {}
    if status.get("phase") not in (None, "Pending", "Running"):
        return None
    for condition in status.get("conditions") or []:
        if (
            condition.get("type") == "PodScheduled"
            and condition.get("status") == "False"
            and condition.get("reason") == "Unschedulable"
        ):
            said = condition.get("message") or "no node fits it"
            return PodProblem("Unschedulable", f"trainer pod {name} cannot be scheduled: {said}")
    for container in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        waiting = (container.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason in STUCK_WAITING_REASONS:
            said = f": {waiting['message']}" if waiting.get("message") else ""
            return PodProblem(
                reason, f"trainer pod {name}, container {container.get('name')}: {reason}{said}"
            )
    return None


def _controller_uid(obj: Mapping[str, Any]) -> str | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


def example_scores(evaluation: Mapping[str, Any] | None) -> dict[int, float] | None:
    """Per-example scores of an evaluation file (``perExample``), keyed by example index."""
    if evaluation is None:
        return None
    examples = evaluation.get("perExample")
    if not isinstance(examples, list):
        return None
    scores: dict[int, float] = {}
    for position, item in enumerate(examples):
        if not isinstance(item, Mapping):
            continue
        index = item.get("index", position)
        score = item.get("score")
        if isinstance(index, int) and isinstance(score, int | float) and not isinstance(score, bool):
            scores[index] = float(score)
        elif isinstance(index, int):
            scores[index] = 0.0  # a failed grading counts 0, as in the trainer's mean
    return scores


@dataclass(frozen=True)
class RoundObservation:
    """What the controller saw of one round: its Job, the trainer's output, the evaluation files."""

    round: int
    job: JobView
    output: TrainerOutput | None = None
    #: per-example scores of this round's evaluation file and of the baseline's, when readable
    examples: dict[int, float] | None = None
    baseline_examples: dict[int, float] | None = None
    #: why the round's newest trainer pod is not running, when a person has to act
    pod_problem: PodProblem | None = None


@dataclass(frozen=True)
class DatasetOutcome:
    stats: dataset_build.DatasetStats | None = None
    #: episodes that qualified when none or too few did
    episodes: int = 0
    error: str | None = None


@dataclass(frozen=True)
class Observed:
    generation: int | None
    now: datetime
    gate: GateObservation | None = None
    dataset: DatasetOutcome | None = None
    round: RoundObservation | None = None


# ------------------------------------------------------------------------------------ what to observe


class NeedKind(enum.StrEnum):
    NOTHING = "Nothing"
    GATE = "Gate"
    DATASET = "Dataset"
    ROUND = "Round"


@dataclass(frozen=True)
class Need:
    kind: NeedKind
    round: int | None = None


def is_terminal(status: ft.FineTuneJobStatus, generation: int | None) -> bool:
    """Nothing left to do: Succeeded, or Failed with no spec change since that could make a difference."""
    if status.phase == ft.FineTunePhase.SUCCEEDED:
        return True
    if status.phase != ft.FineTunePhase.FAILED:
        return False
    return not can_restart(status) or generation is None or status.observed_generation == generation


def can_restart(status: ft.FineTuneJobStatus) -> bool:
    """A Failed job restarts on a spec change only if no trainer Job ever ran for it."""
    return not status.rounds and status.baseline is None and status.start_time is None


def _round_done(entry: ft.RoundStatus) -> bool:
    return entry.score is not None or entry.checkpoint is not None


def current_round(spec: ft.FineTuneJobSpec, status: ft.FineTuneJobStatus) -> int | None:
    """The round whose Job should exist now, or None when the next one is not decided yet."""
    if spec.evaluation is not None and (status.baseline is None or status.baseline.score is None):
        return 0
    if status.rounds and not _round_done(status.rounds[-1]):
        return status.rounds[-1].round
    if not status.rounds:
        return 1
    return None


def _gate_passed(status: ft.FineTuneJobStatus) -> bool:
    return cond.is_condition_true(status.conditions, ConditionType.GATE_PASSED)


def _dataset_ready(status: ft.FineTuneJobStatus) -> bool:
    return status.dataset is not None and status.dataset.sha256 is not None


def need(spec: ft.FineTuneJobSpec, status: ft.FineTuneJobStatus, generation: int | None) -> Need:
    """What the controller must observe (or build) before ``decide`` can take the next step."""
    if is_terminal(status, generation) or spec.backend != ft.Backend.LOCAL:
        return Need(NeedKind.NOTHING)
    if status.phase == ft.FineTunePhase.FAILED:
        return Need(NeedKind.NOTHING)  # restarts from scratch in ``decide``
    if not _dataset_ready(status):
        if spec.suspend:
            return Need(NeedKind.NOTHING)
        if spec.gate.labeling_ref is not None and not _gate_passed(status):
            return Need(NeedKind.GATE)
        if status.phase == ft.FineTunePhase.BUILDING_DATASET:
            return Need(NeedKind.DATASET)
        return Need(NeedKind.NOTHING)
    number = current_round(spec, status)
    return Need(NeedKind.ROUND, number) if number is not None else Need(NeedKind.NOTHING)


# ------------------------------------------------------------------------------------ the step


@dataclass(frozen=True)
class RoundPlan:
    """Create (or adopt) the Job of ``round`` (0: the baseline evaluation)."""

    round: int
    learning_rate: float | None = None
    #: the adapter this round starts from (the previous round's)
    init_adapter: str | None = None


@dataclass(frozen=True)
class Transition:
    phase: ft.FineTunePhase
    reason: str
    message: str
    #: ``Warning`` for failures, else ``Normal`` (the Kubernetes Event type)
    event_type: str = "Normal"


@dataclass
class Step:
    status: ft.FineTuneJobStatus
    transition: Transition | None = None
    create_round: RoundPlan | None = None
    suspend_job: int | None = None
    resume_job: int | None = None


def utcnow() -> datetime:
    return datetime.now(UTC)


def _now(observed: Observed) -> datetime:
    return observed.now.astimezone(UTC).replace(microsecond=0)


def _condition(
    status: ft.FineTuneJobStatus,
    type_: str,
    value: bool,
    reason: str,
    message: str,
    observed: Observed,
) -> None:
    new = cond.Condition(
        type=type_,
        status=ConditionStatus.TRUE if value else ConditionStatus.FALSE,
        reason=reason,
        message=message,
        last_transition_time=_now(observed),
        observed_generation=observed.generation,
    )
    status.conditions = cond.set_condition(status.conditions, new)


_PROGRESSING_PHASES = {
    ft.FineTunePhase.WAITING_FOR_GATE: Reason.GATE_WAITING,
    ft.FineTunePhase.BUILDING_DATASET: Reason.DATASET_BUILT,
    ft.FineTunePhase.TRAINING: Reason.TRAINING,
    ft.FineTunePhase.EVALUATING: Reason.EVALUATING,
}


def _enter(
    step: Step,
    phase: ft.FineTunePhase,
    reason: str,
    message: str,
    observed: Observed,
) -> None:
    """Move to ``phase`` (if not there already) and set the conditions every phase keeps."""
    status = step.status
    failed = phase == ft.FineTunePhase.FAILED
    succeeded = phase == ft.FineTunePhase.SUCCEEDED
    if status.phase != phase:
        step.transition = Transition(phase, reason, message, "Warning" if failed else "Normal")
    status.phase = phase
    _condition(status, ConditionType.READY, succeeded, reason, message, observed)
    progressing = phase in _PROGRESSING_PHASES
    _condition(status, ConditionType.PROGRESSING, progressing, reason, message, observed)
    if failed:
        _condition(status, ConditionType.FAILED, True, reason, message, observed)
    elif cond.get_condition(status.conditions, ConditionType.FAILED) is not None:
        _condition(status, ConditionType.FAILED, False, reason, message, observed)
    if phase in TERMINAL_PHASES and status.completion_time is None:
        status.completion_time = _now(observed)


#: ``Ready`` reasons that stand for a problem outside the phase's own work, said until it is gone
_HELD_READY = frozenset({Reason.RECONCILE_ERROR, Reason.INVALID_SPEC})


def ready_again(step: Step, observed: Observed) -> None:
    """After an error or an invalid spec held ``Ready`` (the phase kept), say what the phase says
    again once a tick goes through: the ``Progressing`` condition keeps its reason and message."""
    status = step.status
    ready = cond.get_condition(status.conditions, ConditionType.READY)
    progressing = cond.get_condition(status.conditions, ConditionType.PROGRESSING)
    if ready is None or ready.reason not in _HELD_READY or status.phase in (None, ft.FineTunePhase.FAILED):
        return
    reason = progressing.reason if progressing is not None else Reason.RECONCILED
    message = progressing.message if progressing is not None else str(status.phase)
    _condition(
        status, ConditionType.READY, status.phase == ft.FineTunePhase.SUCCEEDED, reason, message, observed
    )


def _copy(status: ft.FineTuneJobStatus) -> ft.FineTuneJobStatus:
    return status.model_copy(deep=True)


def decide(spec: ft.FineTuneJobSpec, status: ft.FineTuneJobStatus, observed: Observed) -> Step:
    """The next status and action. Pure: ``observed`` carries everything read from outside."""
    step = Step(_copy(status))
    if is_terminal(status, observed.generation):
        return step
    if status.phase == ft.FineTunePhase.FAILED:
        # The spec changed after a failure that came before any trainer ran: start over. The gate
        # too (labelingRef may name another RewardLabeling now): conditions are merged when
        # written, so GatePassed is said again, not left to the last spec's True.
        step.status = ft.FineTuneJobStatus(conditions=[])
        if spec.gate.labeling_ref is not None:
            message = "the spec changed: checking the gate again"
            _condition(step.status, ConditionType.GATE_PASSED, False, Reason.GATE_WAITING, message, observed)
    step.status.observed_generation = observed.generation
    if spec.backend != ft.Backend.LOCAL:
        message = (
            f"backend {spec.backend.value} is not implemented yet (a later release adds it); "
            "use backend: local"
        )
        _enter(step, ft.FineTunePhase.FAILED, Reason.BACKEND_NOT_IMPLEMENTED, message, observed)
        return step
    if spec.suspend:
        return _suspend(spec, step, observed)
    if step.status.phase == ft.FineTunePhase.SUSPENDED:
        _condition(step.status, ConditionType.SUSPENDED, False, Reason.RECONCILED, "resumed", observed)
    if not _dataset_ready(step.status):
        return _before_training(spec, step, observed)
    return _training(spec, step, observed)


def _suspend(spec: ft.FineTuneJobSpec, step: Step, observed: Observed) -> Step:
    status = step.status
    if status.phase != ft.FineTunePhase.SUSPENDED and _dataset_ready(status):
        number = current_round(spec, status)
        if number is not None and _round_started(status, number):
            step.suspend_job = number
    message = "spec.suspend is true: no trainer runs until it is false again"
    _condition(status, ConditionType.SUSPENDED, True, Reason.SUSPENDED, message, observed)
    _enter(step, ft.FineTunePhase.SUSPENDED, Reason.SUSPENDED, message, observed)
    return step


def _round_started(status: ft.FineTuneJobStatus, number: int) -> bool:
    if number == 0:
        return status.start_time is not None
    return any(entry.round == number for entry in status.rounds)


def _before_training(spec: ft.FineTuneJobSpec, step: Step, observed: Observed) -> Step:
    status = step.status
    ref = spec.gate.labeling_ref
    if ref is not None and not _gate_passed(status):
        gate = observed.gate
        if gate is None:
            _enter(
                step, ft.FineTunePhase.WAITING_FOR_GATE, Reason.GATE_WAITING, "checking the gate", observed
            )
            return step
        if gate.state != GateState.OPEN:
            reason = {
                GateState.NOT_FOUND: Reason.GATE_NOT_FOUND,
                GateState.BLOCKED: Reason.GATE_FAILED,
            }.get(gate.state, Reason.GATE_WAITING)
            _condition(status, ConditionType.GATE_PASSED, False, reason, gate.message, observed)
            _enter(step, ft.FineTunePhase.WAITING_FOR_GATE, reason, gate.message, observed)
            return step
        _condition(status, ConditionType.GATE_PASSED, True, Reason.GATE_PASSED, gate.message, observed)
        _enter(
            step,
            ft.FineTunePhase.BUILDING_DATASET,
            Reason.GATE_PASSED,
            f"{gate.message}: building the dataset",
            observed,
        )
        return step
    outcome = observed.dataset
    if status.phase != ft.FineTunePhase.BUILDING_DATASET or outcome is None:
        _enter(
            step,
            ft.FineTunePhase.BUILDING_DATASET,
            Reason.RECONCILED,
            "building the dataset snapshot",
            observed,
        )
        return step
    minimum = spec.dataset.min_episodes
    count = outcome.stats.episodes if outcome.stats is not None else outcome.episodes
    if outcome.stats is None or count < minimum:
        message = (
            f"dataset has {count} episodes with reward >= {spec.dataset.min_reward:g}, need at least "
            f"{minimum} (lower spec.dataset.minReward, or label more episodes, then edit the spec to "
            "start again)"
        )
        if outcome.error and outcome.stats is None and count:
            message = f"{message}: {outcome.error}"
        _condition(status, ConditionType.DATASET_READY, False, Reason.NOT_ENOUGH_EPISODES, message, observed)
        _enter(step, ft.FineTunePhase.FAILED, Reason.NOT_ENOUGH_EPISODES, message, observed)
        return step
    stats = outcome.stats
    status.dataset = dataset_status(stats, stats.path)
    message = f"dataset {stats.sha256[:12]}: {stats.episodes} episodes, ~{stats.tokens} tokens"
    _condition(status, ConditionType.DATASET_READY, True, Reason.DATASET_BUILT, message, observed)
    return _start_round(spec, step, observed, first_message=message)


def wait_for_quota(step: Step, message: str, observed: Observed) -> None:
    """A ResourceQuota refused the Job ``step`` planned: the status stays as decided (a round whose
    Job is missing is created again on the next tick), with ``Ready`` saying why nothing runs yet."""
    _condition(step.status, ConditionType.READY, False, Reason.QUOTA_EXCEEDED, message, observed)


def dataset_status(stats: dataset_build.DatasetStats, path: str) -> ft.DatasetStatus:
    def fraction(value: float) -> float:
        return min(1.0, max(0.0, round(value, 6)))

    return ft.DatasetStatus(
        episodes=stats.episodes,
        train_episodes=stats.train_episodes,
        validation_episodes=stats.validation_episodes,
        tokens=stats.tokens,
        sha256=stats.sha256,
        path=path,
        avg_reward=fraction(stats.avg_reward),
        min_reward=fraction(stats.min_reward),
        max_reward=fraction(stats.max_reward),
    )


def _learning_rate(spec: ft.FineTuneJobSpec, number: int) -> float:
    decay = spec.evaluation.lr_decay if spec.evaluation is not None else 1.0
    return rounds_mod.round_learning_rate(spec.hyperparameters.learning_rate, decay, number)


def _start_round(
    spec: ft.FineTuneJobSpec,
    step: Step,
    observed: Observed,
    *,
    first_message: str = "",
    number: int | None = None,
    learning_rate: float | None = None,
    init_adapter: str | None = None,
    message: str | None = None,
) -> Step:
    """Plan the Job of the next round (0: baseline) and enter Evaluating or Training."""
    status = step.status
    number = current_round(spec, status) if number is None else number
    assert number is not None
    if number == 0:
        plan = RoundPlan(0)
        text = message or "scoring the base model on the held-out split (round 0)"
        phase = ft.FineTunePhase.EVALUATING
        reason = Reason.EVALUATING
    else:
        lr = learning_rate if learning_rate is not None else _learning_rate(spec, number)
        plan = RoundPlan(number, lr, init_adapter)
        if not any(entry.round == number for entry in status.rounds):
            status.rounds.append(ft.RoundStatus(round=number, learning_rate=lr))
        of = f" of at most {spec.evaluation.max_rounds}" if spec.evaluation is not None else ""
        text = message or f"training round {number}{of} at learning rate {lr:.3g}"
        phase = ft.FineTunePhase.TRAINING
        reason = Reason.TRAINING
    if first_message:
        text = f"{first_message}; {text}"
    status.progress = ft.Progress(percent=0, round=number or None)
    if status.start_time is None:
        status.start_time = _now(observed)
    step.create_round = plan
    _enter(step, phase, reason, text, observed)
    return step


def _training(spec: ft.FineTuneJobSpec, step: Step, observed: Observed) -> Step:
    status = step.status
    number = current_round(spec, status)
    if number is None:
        return _after_round(spec, step, observed)
    seen = observed.round
    if seen is None or seen.round != number:
        # Nothing observed for this round (just resumed): make sure its Job exists.
        return _start_round(
            spec,
            step,
            observed,
            number=number,
            learning_rate=_round_lr(status, number),
            init_adapter=_init_adapter(status, number),
        )
    job = seen.job
    output = seen.output
    final = output.final if output is not None else None
    # SIGTERM (the Job deleted, its node drained) is never the round's end: with a checkpoint the new
    # pod resumes from it, without one (stopped while loading) it starts the round afresh
    stopped = (
        final is not None
        and final.get("event") == "failed"
        and (final.get("resumable") is True or final.get("reason") == "Terminated")
    )
    if job.state == JobState.MISSING and (final is None or stopped):
        # Not created yet, or gone before it finished (deleted by hand, or with its node: the
        # trainer's last word is a SIGTERM checkpoint, "resumable"): create-or-adopt it again; the
        # new pod continues from the round's checkpoint (resumeFrom: auto).
        return _start_round(
            spec,
            step,
            observed,
            number=number,
            learning_rate=_round_lr(status, number),
            init_adapter=_init_adapter(status, number),
        )
    gone_failed = job.state == JobState.MISSING and final is not None and final.get("event") == "failed"
    if job.state == JobState.FAILED or gone_failed:
        return _record_failure(step, observed, number, job, final)
    if final is not None and final.get("event") in ("completed", "evaluated"):
        return _record_success(spec, step, observed, number, seen)
    if job.state == JobState.SUCCEEDED:
        if job.finished_at is None or observed.now - job.finished_at < RESULT_GRACE:
            return step  # the pod log may not be readable yet
        message = (
            f"round {number}'s Job succeeded but its result could not be read from the pod log "
            "or the trainer's status file on the model volume"
        )
        return _fail(step, observed, FailureReason.RESULT_UNAVAILABLE, message)
    # Running, or suspended while the FineTuneJob is not: a ``failed`` line from a pod the Job will
    # retry (preempted, SIGTERM after a checkpoint) is not the end of the round.
    if job.state == JobState.SUSPENDED or job.suspend_requested:
        # Also a Job still stopping its pods: resumed before it finished suspending, it would
        # otherwise stay suspended.
        step.resume_job = number
    _copy_progress(status, number, output)
    scoring = number == 0 or (output is not None and output.last_event == "evaluating")
    phase = ft.FineTunePhase.EVALUATING if scoring else ft.FineTunePhase.TRAINING
    ready = cond.get_condition(status.conditions, ConditionType.READY)
    was_waiting = ready is not None and ready.reason in WAITING_REASONS
    if status.phase != phase or was_waiting:
        if number == 0:
            what = "scoring the base model (round 0)"
        elif scoring:
            what = f"round {number} trained; scoring its adapter"
        else:
            what = f"training round {number}"
        _enter(step, phase, Reason.EVALUATING if scoring else Reason.TRAINING, what, observed)
    problem = seen.pod_problem
    if problem is not None:
        _condition(status, ConditionType.READY, False, problem.reason, problem.message, observed)
    return step


def _round_lr(status: ft.FineTuneJobStatus, number: int) -> float | None:
    for entry in status.rounds:
        if entry.round == number:
            return entry.learning_rate
    return None


def _init_adapter(status: ft.FineTuneJobStatus, number: int) -> str | None:
    if number <= 1:
        return None
    for entry in status.rounds:
        if entry.round == number - 1:
            return entry.checkpoint
    return None


def _copy_progress(status: ft.FineTuneJobStatus, number: int, output: TrainerOutput | None) -> None:
    if output is None or output.lines == 0:
        return
    live = output.status
    status.progress = ft.Progress(
        percent=max(0, min(100, int(live.percent))),
        round=number or None,
        epoch=float(live.epoch) if live.epoch is not None else None,
        step=live.step,
        total_steps=live.total_steps,
        eta_seconds=max(0, int(live.eta_seconds)) if live.eta_seconds is not None else None,
        loss=_finite(live.loss),
    )


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _score(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return min(1.0, max(0.0, value))


def _record_success(
    spec: ft.FineTuneJobSpec, step: Step, observed: Observed, number: int, seen: RoundObservation
) -> Step:
    status = step.status
    assert seen.output is not None
    live = seen.output.status
    score = _score(live.score)
    if number == 0:
        if score is None:
            return _fail(
                step, observed, Reason.TRAINING_FAILED, "the baseline evaluation ended without a score"
            )
        status.baseline = ft.Baseline(score=score)
        status.progress = ft.Progress(percent=100)
        return _start_round(
            spec,
            step,
            observed,
            number=1,
            message=(
                f"baseline score {score:.3f}; training round 1 at learning rate {_learning_rate(spec, 1):.3g}"
            ),
        )
    entry = next(e for e in status.rounds if e.round == number)
    entry.train_loss = _finite(live.train_loss)
    entry.valid_loss = _finite(live.valid_loss)
    entry.score = score
    entry.checkpoint = live.adapter_path or live.checkpoint_path or f"round-{number}"
    status.progress = ft.Progress(percent=100, round=number)
    if spec.evaluation is not None:
        if score is None:
            message = f"round {number} trained but its evaluation gave no score"
            return _fail(step, observed, Reason.TRAINING_FAILED, message)
        status.result = evaluation_result(score, spec.evaluation.normalized_threshold(), seen)
    return _after_round(spec, step, observed)


def evaluation_result(score: float, threshold: float, seen: RoundObservation) -> ft.EvaluationResult:
    """The round's score against the baseline, example by example when both evaluation files were read."""
    improvements = regressions = examples = None
    if seen.examples is not None and seen.baseline_examples is not None:
        common = sorted(set(seen.examples) & set(seen.baseline_examples))
        improvements = sum(
            1 for i in common if seen.examples[i] > seen.baseline_examples[i] + rounds_mod.METRIC_TOLERANCE
        )
        regressions = sum(
            1 for i in common if seen.examples[i] < seen.baseline_examples[i] - rounds_mod.METRIC_TOLERANCE
        )
        examples = len(seen.examples)
    return ft.EvaluationResult(
        score=score,
        improvements=improvements,
        regressions=regressions,
        examples=examples,
        passed=rounds_mod.meets_threshold(score, threshold),
    )


def _round_results(status: ft.FineTuneJobStatus) -> list[rounds_mod.RoundResult]:
    return [
        rounds_mod.RoundResult(
            round=entry.round,
            learning_rate=entry.learning_rate or 0.0,
            phase=backend_mod.RoundPhase.SUCCEEDED,
            score=entry.score,
            train_loss=entry.train_loss,
            valid_loss=entry.valid_loss,
            checkpoint=entry.checkpoint,
        )
        for entry in status.rounds
        if _round_done(entry)
    ]


def _after_round(spec: ft.FineTuneJobSpec, step: Step, observed: Observed) -> Step:
    """Decide, after a finished round, whether another runs (the CLI's rule) or how the job ends."""
    status = step.status
    evaluation = spec.evaluation
    if evaluation is None:
        last = status.rounds[-1]
        status.fine_tuned_model = last.checkpoint
        return _succeed(step, observed, f"round {last.round} trained (no evaluation configured)")
    decision = rounds_mod.next_round_decision(
        _round_results(status),
        evaluation.normalized_threshold(),  # graders score in [0, 1]; the spec is in the grader's units
        evaluation.max_rounds,
        spec.hyperparameters.learning_rate,
        evaluation.lr_decay,
    )
    if decision.train:
        assert decision.next_round is not None
        return _start_round(
            spec,
            step,
            observed,
            number=decision.next_round,
            learning_rate=decision.learning_rate,
            init_adapter=decision.init_adapter,
            message=decision.message,
        )
    best = next((e for e in status.rounds if e.round == decision.best_round), None)
    passed = decision.stop_reason == rounds_mod.StopReason.THRESHOLD_MET
    _condition(
        status,
        ConditionType.EVALUATION_PASSED,
        passed,
        Reason.EVALUATION_PASSED if passed else Reason.MAX_ROUNDS_REACHED,
        decision.message,
        observed,
    )
    if passed and best is not None:
        status.fine_tuned_model = best.checkpoint
        return _succeed(step, observed, decision.message)
    best_text = f"; best round {best.round} ({best.checkpoint})" if best is not None else ""
    return _fail(step, observed, Reason.MAX_ROUNDS_REACHED, f"{decision.message}{best_text}")


def _succeed(step: Step, observed: Observed, message: str) -> Step:
    _enter(step, ft.FineTunePhase.SUCCEEDED, Reason.SUCCEEDED, message, observed)
    return step


def _fail(step: Step, observed: Observed, reason: str, message: str) -> Step:
    _enter(step, ft.FineTunePhase.FAILED, reason, message, observed)
    return step


_JOB_REASONS = {
    "DeadlineExceeded": FailureReason.DEADLINE_EXCEEDED,
    "BackoffLimitExceeded": FailureReason.BACKOFF_LIMIT_EXCEEDED,
}


def _record_failure(
    step: Step, observed: Observed, number: int, job: JobView, final: Mapping[str, Any] | None
) -> Step:
    """A round's Job failed: the trainer's reason when it said one (Diverged, OutOfMemory, ...),
    else the Job's (DeadlineExceeded, BackoffLimitExceeded)."""
    what = "the baseline evaluation" if number == 0 else f"round {number}"
    trainer_reason = (
        str(final.get("reason") or "") if final is not None and final.get("event") == "failed" else ""
    )
    if trainer_reason and job.reason != "DeadlineExceeded":
        detail = str(final.get("message") or trainer_reason) if final is not None else trainer_reason
        reason = trainer_reason if trainer_reason[:1].isupper() else Reason.TRAINING_FAILED
        return _fail(step, observed, reason, f"{what} failed: {detail}")
    reason = _JOB_REASONS.get(job.reason or "", Reason.TRAINING_FAILED)
    detail = job.message or job.reason or "the trainer Job failed"
    return _fail(step, observed, reason, f"{what} failed: {detail}")


# ------------------------------------------------------------------------------------ spec checks


def check_evaluation_grader(spec: ft.FineTuneJobSpec) -> None:
    """Refuse, before any Job runs, an evaluation grader the trainer would refuse: raises ``SpecError``
    naming ``spec.evaluation.grader.<field>`` (the CRD schema checks only its type and range)."""
    if spec.evaluation is None:
        return
    try:
        graders.load_grader_spec(spec.evaluation.grader.to_spec_dict())
    except graders.GraderSpecError as exc:
        problems = [
            FieldProblem(f"spec.evaluation.grader.{path}" if path else "spec.evaluation.grader", message)
            for path, message in exc.problems
        ]
        raise SpecError(problems) from None


# ------------------------------------------------------------------------------------ trainer config


def trainer_config(
    spec: ft.FineTuneJobSpec,
    layout: VolumeLayout,
    plan: RoundPlan,
    *,
    has_validation: bool,
) -> dict[str, Any]:
    """The trainer config file of a round (``training.config`` format), paths as a trainer pod sees them.

    Raises ``trainer_config_mod.ConfigError`` naming the field when the trainer would refuse it.
    """
    hp = spec.hyperparameters
    train_file = layout.in_trainer(layout.dataset)
    validation_file = layout.in_trainer(layout.validation) if has_validation else None
    config: dict[str, Any] = {
        "baseModel": base_model_path(spec.base_model),
        "trainFile": train_file,
        "outputDir": layout.in_trainer(layout.round_dir(plan.round)),
        "hyperparameters": {
            "epochs": hp.epochs,
            "learningRate": plan.learning_rate if plan.learning_rate is not None else hp.learning_rate,
            "batchSize": hp.batch_size,
            "loraRank": hp.lora_rank,
            # the trainer takes an integer alpha (the scaling is alpha / rank)
            "loraAlpha": max(1, round(hp.lora_alpha)),
            "loraDropout": hp.lora_dropout,
            "maxSeqLength": hp.max_seq_length,
            "seed": hp.seed,
        },
        "device": "auto",
    }
    if validation_file is not None:
        config["validationFile"] = validation_file
    if plan.round >= 1:
        config["round"] = plan.round
        # A retried or resumed pod continues from the round's last checkpoint.
        config["resumeFrom"] = "auto"
        if plan.init_adapter:
            config["initAdapter"] = plan.init_adapter
    if spec.evaluation is not None:
        config["evaluation"] = {
            "graderSpec": spec.evaluation.grader.to_spec_dict(),
            "evalFile": validation_file or train_file,
        }
    trainer_config_mod.parse_config(config, source=f"round {plan.round} trainer config")
    return config


#: libyaml's emitter when PyYAML has it (ten times the pure-Python one's speed), else the same in Python
_YAML_DUMPER: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def write_trainer_config(
    models_dir: Path, layout: VolumeLayout, round_number: int, config: Mapping[str, Any]
) -> Path:
    """Write a round's trainer config next to its outputs, once: a round's config never changes, so
    the file that made an adapter stays beside it. Atomic (temporary file, then rename)."""
    path = layout.in_operator(models_dir, layout.config_file(round_number))
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(yaml.dump(dict(config), Dumper=_YAML_DUMPER, sort_keys=False), encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_json_file(path: Path) -> dict[str, Any] | None:
    """A JSON object from a file on the volume, or None when it is missing or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def volume_output(models_dir: Path, layout: VolumeLayout, round_number: int) -> TrainerOutput | None:
    """The round's final line from the model volume: the trainer's status file (training rounds) or
    the baseline's evaluation file. None unless it holds a final line."""
    if round_number == 0:
        result = read_json_file(layout.in_operator(models_dir, layout.result_file(0)))
        if result is None or result.get("score") is None:
            return None
        output = TrainerOutput()
        output.apply(
            {"event": "evaluated", "score": result.get("score"), "perMetric": result.get("perMetric")}
        )
        return output
    line = read_json_file(layout.in_operator(models_dir, layout.status_file(round_number)))
    if line is None or line.get("event") not in FINAL_EVENTS:
        return None
    output = TrainerOutput()
    output.apply(line)
    return output


# ------------------------------------------------------------------------------------ dataset snapshot


#: the snapshot record's copy of what it was built from (the agent and ``spec.dataset``)
BUILT_FROM = "builtFrom"


def build_snapshot(
    store: store_base.EpisodeStore, spec: ft.FineTuneJobSpec, models_dir: Path, layout: VolumeLayout
) -> DatasetOutcome:
    """Build the dataset snapshot onto the model volume, once (blocking: run it off the event loop).

    A snapshot already there (``dataset/snapshot.json`` beside the files) is reused: a FineTuneJob
    trains on one snapshot, and a restarted operator must not rebuild it under a running trainer
    from episodes that arrived since. One built from another ``spec.dataset`` (a job that failed
    before any trainer ran, its spec then fixed) is built again: no trainer has read it.
    """
    assert spec.agent_id is not None
    record = layout.in_operator(models_dir, layout.snapshot)
    existing = read_json_file(record)
    built_from = {"agentId": spec.agent_id, **spec.dataset.to_json_dict()}
    if existing is not None and existing.get(BUILT_FROM, built_from) != built_from:
        log.info("dataset record %s was built from another spec.dataset; building it again", record)
    elif existing is not None and layout.in_operator(models_dir, layout.dataset).is_file():
        try:
            stats = dataset_build.DatasetStats.from_json_dict(existing)
            return DatasetOutcome(stats=stats, episodes=stats.episodes)
        except ValueError:
            log.warning("dataset record %s is unreadable; building the dataset again", record)
    options = dataset_build.BuildOptions(
        agent_id=spec.agent_id,
        min_reward=spec.dataset.min_reward,
        since=spec.dataset.since,
        max_episodes=spec.dataset.max_episodes,
        validation_fraction=spec.dataset.validation_fraction,
    )
    output = layout.in_operator(models_dir, layout.dataset)
    episodes = store.iter_json(store_base.EpisodeQuery(**options.query_filter()))
    try:
        stats = dataset_build.build_dataset(
            episodes, options, output=output, name=f"{layout.name}-dataset"[:128]
        )
    except dataset_build.EmptyDatasetError as exc:
        return DatasetOutcome(episodes=0, error=str(exc))
    stats.path = str(layout.dataset)
    if stats.validation_path is not None:
        stats.validation_path = str(layout.validation)
    if stats.episodes >= spec.dataset.min_episodes:
        _write_json_atomic(record, {**stats.to_json_dict(), BUILT_FROM: built_from})
    return DatasetOutcome(stats=stats, episodes=stats.episodes)


def _write_json_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=1), encoding="utf-8")
    os.replace(tmp, path)
