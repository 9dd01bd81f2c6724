"""FineTuneJob controller: gate, dataset snapshot, one trainer Job per round, result in status.

One kopf daemon per FineTuneJob runs the reconcile loop, with the status as the state machine
(``pipeline.finetune_flow``): each tick asks the flow what to observe, observes it (the gate's
RewardLabeling, a dataset build, the current round's Job and the trainer's JSON lines in its pod
log), lets the flow decide, does the one child action it asks for (create-or-adopt a round's Job,
suspend or resume it) and writes the status, only what changed (``common.StatusWriter``). Every
action is idempotent, so an operator restart at any point re-enters the same tick without a second
Job for a round.

Why a daemon woken by events rather than a timer: between its steps a FineTuneJob waits for
something that a watch reports (its trainer Job changing, its spec changing), so the daemon sleeps
until then (``common.Waker``, set by the two ``on.event`` handlers below) and goes on at once after
a step that has a next one (dataset built -> first round). It polls only what no watch reports: the
pod log of a running trainer (every ``LIGHTNING_FINETUNE_POLL_SECONDS``, default 10) and the gate's
RewardLabeling while it waits for a verdict; a resync every ``LIGHTNING_FINETUNE_RESYNC_SECONDS``
(default 300) covers a watch event that never came. A timer ticking every object every few seconds
cost 30 ticks per object in the operator benchmark; this costs about six. No change handlers means
kopf keeps no last-handled-configuration annotation on the object (one write per object less).

Why the pod log for progress: trainer pods need no network path to the operator (a default-deny
NetworkPolicy is fine), ``kubectl logs`` shows the same lines, and the final line carries the round's
score. Once a round's Job finished, its result is read from the model volume first (the trainer's
status file, or the baseline's evaluation file: written before the trainer exits, there after the
pod is gone) and from the pod log only when the volume has no final line (a trainer killed first);
the finished Job's body comes with the watch event (``remember_job``), so a finished round costs no
API reads.

On delete, kopf stops the daemon (the finalizer holds the object until it returned), which deletes
the FineTuneJob's Jobs with their pods; ownerReferences do the same on a real cluster, where this
just makes it immediate. Files on the model volume (dataset, adapters) stay: an adapter may be
promoted still.

What a person has to fix shows in ``Ready`` (False, with Kubernetes' reason and message) and one
Warning Event when the wait begins, without failing the FineTuneJob: a round's Job refused by a
ResourceQuota (``QuotaExceeded``; the Job is created on a later tick, every
``LIGHTNING_RETRY_DELAY_SECONDS``, once the quota has room), and a trainer pod that no node fits
(``Unschedulable``: no GPU node, a nodeSelector or toleration that matches nothing) or whose
container is stuck (``ImagePullBackOff``, ``CreateContainerConfigError``...), seen on the pod-log
poll, or a Job whose pods the Job controller cannot create (``FailedCreate``: a quota on GPUs or
pods, an admission webhook; from the Job's Events, read only while it has no pod). Once the pod
runs, ``Ready`` says what the round does again.

Talks to ``controllers.common``, ``pipeline.finetune_flow``, ``manifests.trainer_job`` and ``api``.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import kopf

from lightning_op import k8s
from lightning_op.api import constants, finetune, kinds
from lightning_op.api.common import SpecError
from lightning_op.api.conditions import ConditionType, Reason, get_condition
from lightning_op.controllers import common
from lightning_op.manifests import trainer_job
from lightning_op.pipeline import finetune_flow as flow
from lightning_op.store import base as store_base

log = logging.getLogger(__name__)

KIND = finetune.KIND
RESOURCE = (constants.GROUP, constants.VERSION, kinds.kind_info(KIND).plural)
LABELING_PLURAL = kinds.kind_info("RewardLabeling").plural
ENV_POLL = "LIGHTNING_FINETUNE_POLL_SECONDS"
ENV_RESYNC = "LIGHTNING_FINETUNE_RESYNC_SECONDS"
ENV_TRAINER_IMAGE = "LIGHTNING_TRAINER_IMAGE"
DEFAULT_TRAINER_IMAGE = "ghcr.io/lightning-op/trainer:0.1.0"
#: how often a running trainer's pod log (progress) and a closed gate are read
POLL_SECONDS = common.env_seconds(ENV_POLL, 10.0)
#: the longest a daemon sleeps without an event (a missed watch event costs at most this)
RESYNC_SECONDS = common.env_seconds(ENV_RESYNC, 300.0)
#: pod log lines read per tick: the trainer's JSON lines share the log with its stderr logging
LOG_TAIL_LINES = 200
#: ticks in a row that may go on at once (each wrote a step); then the daemon waits a poll interval
MAX_IMMEDIATE_TICKS = 8
HANDLER = "reconcile_finetune"
#: how long a stopping daemon may take to finish its tick and (on delete) delete its trainer Jobs
#: before kopf cancels it
CLEANUP_SECONDS = 20.0
#: Job states that never change again: such a Job's body is kept from the watch, its result read
#: from the volume
_FINISHED_JOB = frozenset({flow.JobState.SUCCEEDED, flow.JobState.FAILED})


@kopf.daemon(*RESOURCE, cancellation_backoff=CLEANUP_SECONDS, cancellation_timeout=5.0)
async def reconcile_finetune(body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, **_: Any) -> None:
    rt = common.runtime(memo)
    uid = str(body.meta.uid)
    waker = rt.wakers.register(uid)
    writer = common.StatusWriter(rt, body, KIND)
    immediate = 0
    try:
        while not stopped:
            waker.clear()
            delay = await _tick(rt, body, writer, waker)
            immediate = immediate + 1 if delay == 0 else 0
            if immediate > MAX_IMMEDIATE_TICKS:
                log.warning(
                    "FineTuneJob %s/%s: %d steps in a row; pausing",
                    body.meta.namespace,
                    body.meta.name,
                    immediate,
                )
                delay, immediate = POLL_SECONDS, 0
            if delay > 0:
                await waker.wait(stopped, delay)
    finally:
        rt.wakers.discard(uid)
        reason = stopped.reason
        if reason is not None and reason & kopf.DaemonStoppingReason.RESOURCE_DELETED:
            await _delete_trainer_jobs(rt, body, writer.current)


def _new_generation(body: kopf.Body, memo: kopf.Memo, **_: Any) -> bool:
    """A filter, so that kopf invokes no handler for the events of our own status writes (most)."""
    found = common.runtime_if_ready(memo)
    return found is not None and found.wakers.wants(str(body.meta.uid), body.meta.get("generation"))


@kopf.on.event(*RESOURCE, when=_new_generation)
@common.quiet_success
async def wake_on_spec_change(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A new generation (spec edit, ``suspend``) wakes the object's daemon; our status writes do not."""
    found = common.runtime_if_ready(memo)
    if found is not None:
        found.wakers.wake(str(body.meta.uid), body.meta.get("generation"))


@kopf.on.event("batch", "v1", "jobs", labels={trainer_job.LABEL_MANAGED_BY: trainer_job.MANAGED_BY})
@common.quiet_success
async def wake_on_trainer_job(body: kopf.Body, memo: kopf.Memo, type: str | None, **_: Any) -> None:
    """A trainer Job that changed (started, finished, suspended, gone) wakes its FineTuneJob's daemon.
    Its creation does not: the daemon that created it has nothing to do until it runs."""
    found = common.runtime_if_ready(memo)
    if found is not None:
        remember_job(found.finished_jobs, body, type)
        if type != "ADDED":
            found.wakers.wake(body.meta.labels.get(trainer_job.LABEL_FINETUNEJOB_UID))


def remember_job(finished: dict[tuple[str, str], dict[str, Any]], body: kopf.Body, type: str | None) -> None:
    """Keep the body of a trainer Job that the watch reports finished (Complete or Failed), so the
    daemon reads it from here instead of a GET: a finished Job never runs again. Anything else
    (running, suspended, being deleted, gone) is forgotten and read from the API, which is never
    staler than the watch, so a Job the daemon just created or patched is seen as it is."""
    key = (str(body.meta.namespace), str(body.meta.name))
    view = flow.job_view(body)
    if type != "DELETED" and not body.meta.deletion_timestamp and view.state in _FINISHED_JOB:
        finished[key] = dict(body)
    else:
        finished.pop(key, None)


async def _tick(
    rt: common.Runtime, body: kopf.Body, writer: common.StatusWriter, waker: common.Waker
) -> float:
    """One reconcile; returns how long to sleep before the next unless woken (0: go on at once)."""
    generation = body.meta.get("generation")
    waker.generation = generation
    started = time.monotonic()
    outcome = "ok"
    try:
        status = finetune.parse_status({"status": writer.current})
        if flow.is_terminal(status, generation):
            return math.inf  # finished: a spec edit (valid or not) changes nothing
        try:
            spec = finetune.parse_spec(body)
            flow.check_evaluation_grader(spec)
        except SpecError as exc:
            outcome = "failed"
            await _refuse_spec(writer, status, generation, exc)
            return math.inf  # until the spec changes: no retries
        observed = await _observe(rt, body, spec, status)
        step = flow.decide(spec, status, observed)
        if writer.held is not None and writer.held[0] == Reason.RECONCILE_ERROR:
            writer.release()  # this tick went through
        flow.ready_again(step, observed)  # Ready says what the phase says again
        try:
            await _act(rt, body, spec, step)
        except k8s.QuotaExceeded as exc:
            outcome = "retry"
            await _wait_for_quota(writer, step, observed, exc)
            return rt.config.retry_delay
        wrote = await _write(writer, step, generation)
        progress = step.status.progress
        rt.metrics.set_training_progress(
            str(body.meta.namespace), str(body.meta.name), progress.percent if progress is not None else None
        )
        return _next_delay(step, observed, wrote)
    except store_base.StoreUnavailableError as exc:
        outcome = "retry"
        log.warning("FineTuneJob %s/%s: %s", body.meta.namespace, body.meta.name, exc)
        await writer.store_unavailable(generation, exc)  # until the dataset's phase is left
        return rt.config.retry_delay
    except (k8s.Unavailable, _RetryLater) as exc:
        outcome = "retry"
        log.warning(
            "FineTuneJob %s/%s: %s; retrying in %ss",
            body.meta.namespace,
            body.meta.name,
            exc,
            rt.config.retry_delay,
        )
        return rt.config.retry_delay
    except (k8s.Invalid, _PermanentError) as exc:
        outcome = "failed"
        reason = "ApiRejected" if isinstance(exc, k8s.Invalid) else Reason.INVALID_SPEC
        await writer.write(generation, common.FAILED, reason, str(exc))
        return math.inf
    except Exception as exc:
        outcome = "error"
        delay = rt.config.retry_delay
        if isinstance(exc, kopf.TemporaryError):
            delay = max(delay, float(exc.delay or 0))
            log.warning(
                "FineTuneJob %s/%s: %s; retrying in %ss", body.meta.namespace, body.meta.name, exc, delay
            )
        else:
            log.exception(
                "FineTuneJob %s/%s: reconcile failed; retrying in %ss",
                body.meta.namespace,
                body.meta.name,
                delay,
            )
        await _hold_for_error(writer, generation, exc, delay)
        return delay
    finally:
        rt.metrics.observe_reconcile(KIND, HANDLER, outcome, time.monotonic() - started)


async def _refuse_spec(
    writer: common.StatusWriter, status: finetune.FineTuneJobStatus, generation: int | None, exc: SpecError
) -> None:
    """An invalid spec fails a job that has not run a trainer yet; one that has (its Jobs may be
    running) keeps its phase, ``Ready`` saying what to fix, and goes on once the spec is valid again."""
    message = f"invalid spec: {exc}"
    if flow.can_restart(status):  # also a new object: no phase, nothing ran
        await writer.write(generation, common.FAILED, Reason.INVALID_SPEC, message)
        return
    await writer.write(
        generation,
        str(status.phase),
        Reason.INVALID_SPEC,
        f"{message}; the job stays {status.phase} (a running round goes on) until the spec is valid again",
    )


async def _hold_for_error(
    writer: common.StatusWriter, generation: int | None, exc: Exception, delay: float
) -> None:
    """Show an unexpected error in ``Ready`` (reason ``ReconcileError``) until a tick goes through:
    a job that cannot go on (no model volume, a full disk) says why instead of a phase that looks
    like progress. Best effort: the API server may be what failed."""
    message = f"{type(exc).__name__}: {exc}"[:900] + f" (trying again every {delay:g}s)"
    try:
        if not writer.current.get("phase"):
            await writer.write(generation, finetune.FineTunePhase.PENDING, Reason.RECONCILE_ERROR, message)
        await writer.hold(generation, Reason.RECONCILE_ERROR, message)
    except Exception as write_error:  # noqa: BLE001 - the error above is the one to report
        log.warning("FineTuneJob: could not show the error in status: %s", write_error)


async def _wait_for_quota(
    writer: common.StatusWriter, step: flow.Step, observed: flow.Observed, exc: k8s.QuotaExceeded
) -> None:
    """A ResourceQuota refused this round's Job: the status is written as decided (the round
    planned), with ``Ready`` saying why nothing runs (the quota's name, what is used, the limit).
    The next tick finds the Job missing and creates it again."""
    body = writer.body
    log.warning("FineTuneJob %s/%s: %s; retrying", body.meta.namespace, body.meta.name, exc)
    flow.wait_for_quota(step, f"waiting for quota: {exc}", observed)
    await _write(writer, step, observed.generation)


def _next_delay(step: flow.Step, observed: flow.Observed, wrote: bool) -> float:
    if step.create_round is not None:
        return RESYNC_SECONDS  # the new Job's changes wake us
    if observed.gate is not None and not wrote:
        return POLL_SECONDS  # a closed gate: its RewardLabeling has no watch here
    if wrote:
        return 0.0  # a step taken: the next may be possible at once (dataset -> first round)
    seen = observed.round
    if seen is not None and seen.job.state != flow.JobState.SUSPENDED:
        return POLL_SECONDS  # a trainer running (its log), or a finished one whose result is late
    return RESYNC_SECONDS


class _PermanentError(Exception):
    """A round cannot be started with this spec (the trainer config refused it)."""


class _RetryLater(Exception):
    """Something in the way goes away by itself (an earlier FineTuneJob's Job being deleted)."""


async def _delete_trainer_jobs(rt: common.Runtime, body: kopf.Body, status_raw: dict[str, Any]) -> None:
    namespace = str(body.meta.namespace)
    try:
        status = finetune.parse_status({"status": status_raw})
        for number in [0, *(entry.round for entry in status.rounds)]:
            await common.run_sync(rt.cluster.delete_job, namespace, _job_name(body, number))
    except (k8s.K8sError, SpecError) as exc:
        # ownerReferences still let the cluster's garbage collector delete them
        log.warning("FineTuneJob %s/%s deleted, its trainer Jobs not: %s", namespace, body.meta.name, exc)
    rt.metrics.set_training_progress(namespace, str(body.meta.name), None)
    rt.metrics.observe_phase(KIND, namespace, str(body.meta.name), None)


# ----------------------------------------------------------------------------------------- helpers


def _job_name(body: kopf.Body, number: int) -> str:
    return trainer_job.job_name(str(body.meta.name), number)


def _models_dir(rt: common.Runtime) -> Path:
    if not rt.config.models_dir:
        raise kopf.TemporaryError(
            "the operator has no models directory (--models-dir, LIGHTNING_MODELS_DIR): it cannot write "
            "datasets or trainer configs to the model volume",
            delay=max(rt.config.retry_delay, 60.0),
        )
    return Path(rt.config.models_dir)


async def _observe(
    rt: common.Runtime, body: kopf.Body, spec: finetune.FineTuneJobSpec, status: finetune.FineTuneJobStatus
) -> flow.Observed:
    generation = body.meta.get("generation")
    need = flow.need(spec, status, generation)
    now = flow.utcnow()
    layout = flow.VolumeLayout.of(body)
    namespace = str(body.meta.namespace)
    if need.kind == flow.NeedKind.GATE and spec.gate.labeling_ref is not None:
        found = await common.run_sync(
            rt.cluster.get_custom, LABELING_PLURAL, namespace, spec.gate.labeling_ref.name
        )
        return flow.Observed(generation, now, gate=flow.gate_state(spec, found))
    if need.kind == flow.NeedKind.DATASET:
        outcome = await common.run_sync(flow.build_snapshot, rt.store, spec, _models_dir(rt), layout)
        return flow.Observed(generation, now, dataset=outcome)
    if need.kind == flow.NeedKind.ROUND and need.round is not None:
        job_name = _job_name(body, need.round)
        seen = await common.run_sync(
            _observe_round,
            rt.cluster,
            namespace,
            job_name,
            str(body.meta.uid),
            rt.finished_jobs.get((namespace, job_name)),
            layout,
            rt.config.models_dir,
            need.round,
            spec.evaluation is not None,
        )
        return flow.Observed(generation, now, round=seen)
    return flow.Observed(generation, now)


def _observe_round(
    cluster: k8s.Cluster,
    namespace: str,
    job_name: str,
    uid: str,
    finished_job: dict[str, Any] | None,
    layout: flow.VolumeLayout,
    models_dir: str | None,
    number: int,
    evaluated: bool,
) -> flow.RoundObservation:
    """The round's Job (``finished_job`` when the watch reported it finished, else a GET), the
    trainer's final line and, once it finished, the per-example evaluation files. Blocking: run in a
    thread.

    A Job of that name controlled by another FineTuneJob (an earlier one of the same name, deleted
    while the operator was down, whose Jobs the garbage collector has not removed yet) is not this
    round's: it reads as missing, so its trainer's lines never become this job's scores.

    The trainer's lines come from the volume first once the Job finished (its status file, written
    by the trainer before it exits: no pod list, no log read), else from its newest pod's log (a
    running trainer's progress; a trainer killed before it wrote its final line), else the volume
    again for a Job whose pods are gone."""
    raw = finished_job if finished_job is not None else cluster.get_job(namespace, job_name)
    job = flow.job_view(raw if raw is not None and _ours(raw, uid) else None)
    volume = Path(models_dir) if models_dir else None
    job_done = job.state in _FINISHED_JOB
    output: flow.TrainerOutput | None = None
    problem: flow.PodProblem | None = None
    if volume is not None and job_done:
        output = flow.volume_output(volume, layout, number)
    if job.state != flow.JobState.MISSING and not _has_final(output):
        job_uid = str((raw or {}).get("metadata", {}).get("uid") or "")
        pod = flow.newest_pod(cluster.job_pods(namespace, job_name), job_uid)
        problem = flow.pod_problem(pod)
        if pod is None and job.state == flow.JobState.RUNNING and job_uid:
            # no pod at all: the Job controller's FailedCreate Events say why (a GPU quota, a webhook)
            refusal = cluster.job_pod_refusal(namespace, job_name, job_uid)
            problem = flow.pod_refused(job_name, refusal) if refusal is not None else None
        if pod is not None:
            try:
                text = cluster.pod_log_tail(
                    namespace, pod["metadata"]["name"], trainer_job.CONTAINER_NAME, LOG_TAIL_LINES
                )
            except (k8s.NotFound, k8s.Invalid):
                text = ""  # not started yet (400 while the container is created), or already gone
            output = flow.parse_trainer_output(text)
    if volume is not None and not job_done and job.state != flow.JobState.RUNNING and not _has_final(output):
        output = flow.volume_output(volume, layout, number) or output  # suspended or gone: no pods
    examples = baseline = None
    if volume is not None and evaluated and number > 0 and _has_final(output):
        examples = flow.example_scores(
            flow.read_json_file(layout.in_operator(volume, layout.result_file(number)))
        )
        baseline = flow.example_scores(flow.read_json_file(layout.in_operator(volume, layout.result_file(0))))
    return flow.RoundObservation(number, job, output, examples, baseline, problem)


def _ours(job: dict[str, Any], uid: str) -> bool:
    owner = trainer_job.owner_uid(job)
    return owner is None or owner == uid


def _has_final(output: flow.TrainerOutput | None) -> bool:
    """Whether the trainer's lines end the round (``completed``, ``failed`` or ``evaluated``)."""
    return output is not None and output.final is not None


def _trainer_options() -> trainer_job.TrainerJobOptions:
    return trainer_job.TrainerJobOptions(image=os.environ.get(ENV_TRAINER_IMAGE) or DEFAULT_TRAINER_IMAGE)


async def _act(rt: common.Runtime, body: kopf.Body, spec: finetune.FineTuneJobSpec, step: flow.Step) -> None:
    namespace = str(body.meta.namespace)
    plan = step.create_round
    if plan is not None:
        layout = flow.VolumeLayout.of(body)
        dataset = step.status.dataset
        has_validation = bool(dataset is not None and dataset.validation_episodes)
        try:
            config = flow.trainer_config(spec, layout, plan, has_validation=has_validation)
        except ValueError as exc:
            raise _PermanentError(f"round {plan.round} trainer config: {exc}") from None
        await common.run_sync(flow.write_trainer_config, _models_dir(rt), layout, plan.round, config)
        job = trainer_job.build_trainer_job(
            body,
            spec,
            plan.round,
            _trainer_options(),
            config_path=layout.in_trainer(layout.config_file(plan.round)),
        )
        existing, created = await common.run_sync(rt.cluster.create_or_adopt_job, namespace, job)
        if not created and not _ours(existing, str(body.meta.uid)):
            await _replace_foreign_job(rt, namespace, existing)
    for number, suspend in ((step.suspend_job, True), (step.resume_job, False)):
        if number is not None:
            try:
                await common.run_sync(
                    rt.cluster.patch_job, namespace, _job_name(body, number), {"spec": {"suspend": suspend}}
                )
            except k8s.NotFound:
                pass  # nothing to suspend or resume: the next tick re-creates the Job if needed


async def _replace_foreign_job(rt: common.Runtime, namespace: str, job: dict[str, Any]) -> None:
    """A Job with this round's name belongs to an earlier FineTuneJob of the same name (names are
    unique in a namespace, so that one is gone and its Job only waits for the garbage collector):
    delete it now and create ours on a later tick, once it is gone."""
    name = str(job["metadata"]["name"])
    await common.run_sync(rt.cluster.delete_job, namespace, name)
    raise _RetryLater(
        f"Job {namespace}/{name} belongs to an earlier FineTuneJob of this name "
        f"(uid {trainer_job.owner_uid(job)}); deleting it before this round's Job is created"
    )


async def _write(writer: common.StatusWriter, step: flow.Step, generation: int | None) -> bool:
    """The step's status through ``StatusWriter`` (only what changed; an Event on a phase change),
    and a Warning Event when ``Ready`` starts waiting on something a person fixes
    (``flow.WAITING_REASONS``: a full quota, an unschedulable or stuck trainer pod)."""
    status = step.status
    if status.phase is None:
        return False
    target = status.to_json_dict()
    current = writer.current
    fields = {key: target.get(key) for key in {*current, *target} - {*_STATUS_KEYS, "kopf"}}
    if step.transition is not None:
        reason, message = step.transition.reason, step.transition.message
    else:
        ready = get_condition(status.conditions, ConditionType.READY)
        reason = ready.reason if ready is not None else "Reconciled"
        message = ready.message if ready is not None else ""
    before = get_condition(current.get("conditions") or [], ConditionType.READY)
    wrote = await writer.write(
        generation, status.phase, reason, message, conditions=status.conditions, fields=fields
    )
    waiting = get_condition(status.conditions, ConditionType.READY)
    if wrote and waiting is not None and waiting.reason in flow.WAITING_REASONS:
        if before is None or before.reason != waiting.reason:
            # a wait a person has to end (quota, scheduling, image): said once, as a Warning
            kopf.warn(writer.view(generation), reason=waiting.reason, message=waiting.message[:1024])
    return wrote


_STATUS_KEYS = ("phase", "observedGeneration", "conditions")
