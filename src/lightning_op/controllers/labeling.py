"""RewardLabeling controller: sample test, labeling and dry run over the operator's store, in a daemon.

One kopf daemon per RewardLabeling runs the pipeline (``pipeline.labeling``) in the operator process:
sample test (``SampleTested``, records in ``status.sample``), labeling (``Labeling``, counts written
every ``LIGHTNING_LABELING_POLL_SECONDS``), dry run (``Completed`` with scores, verdict, diagnosis).
``Once`` mode then waits for a spec change; ``Continuous`` labels again every ``intervalSeconds``.

Why a daemon in the operator rather than a Job with the operator image: no second image, Job or RBAC
plumbing, and nothing to carry the store's credentials into another pod; the store is the durable
progress (labels are written every ``LABEL_WRITE_BATCH`` gradings and, when the daemon is stopped,
before it stops; ``label_batch`` skips episodes this grader version already labeled), so an operator
restart just re-enters the daemon, which resumes at the stage the status names
(``pipeline.labeling_flow.resume_point``).

The grader spec is checked when the daemon starts and on every spec change: a bad grader is phase
Failed with a condition naming the field (``spec.grader.reference: required``), and the daemon waits
for the next spec change (no retries). A judge endpoint that fails the whole sample test with
errors that may pass (down, 429, 5xx, timeouts) is phase Pending with reason ``BackendUnavailable``
(one Warning Event), tested again every retry delay; a dry run that fails that way gives no
verdict and keeps phase Labeling with the same reason (``_label_and_dry_run``); a store that refuses
writes shows as
``StoreUnavailable`` (``StatusWriter.store_unavailable``). A daemon outlives kopf's per-call
patch, so it writes its status itself, through ``Cluster.patch_custom_status`` (a merge patch of
the changed keys only).

Talks to ``controllers.common``, ``pipeline.labeling``, ``pipeline.labeling_flow`` and ``graders``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import kopf

from lightning_op import graders, k8s
from lightning_op.api import constants, kinds
from lightning_op.api import labeling as rl
from lightning_op.api.common import FieldProblem, SpecError
from lightning_op.api.conditions import Reason
from lightning_op.controllers import common
from lightning_op.pipeline import labeling as labeling_pipeline
from lightning_op.pipeline import labeling_flow as lflow
from lightning_op.store import base as store_base

log = logging.getLogger(__name__)

KIND = rl.KIND
PLURAL = kinds.kind_info(KIND).plural
RESOURCE = (constants.GROUP, constants.VERSION, PLURAL)
ENV_POLL = "LIGHTNING_LABELING_POLL_SECONDS"
#: how often labeling progress is written, and a waiting daemon looks for a spec change
POLL_SECONDS = common.env_seconds(ENV_POLL, 5.0)
T = TypeVar("T")
#: labels per store write while labeling (the CLI's label-batch writes 1,000 at a time)
LABEL_WRITE_BATCH = 100


@kopf.daemon(*RESOURCE, cancellation_timeout=2.0)
async def run_labeling(body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, **_: Any) -> None:
    """The daemon lives as long as the object: its stages are what the reconcile metrics count
    (``common.timed_reconcile``), and its end on delete takes the object out of the phase gauge."""
    rt = common.runtime(memo)
    writer = common.StatusWriter(rt, body, KIND)
    try:
        await _stages_until_stopped(rt, writer, body, stopped)
    except k8s.Unavailable as exc:
        raise kopf.TemporaryError(str(exc), delay=rt.config.retry_delay) from exc
    finally:
        reason = stopped.reason
        if reason is not None and reason & kopf.DaemonStoppingReason.RESOURCE_DELETED:
            rt.metrics.observe_phase(KIND, str(body.meta.namespace), str(body.meta.name), None)


async def _stages_until_stopped(
    rt: common.Runtime, writer: common.StatusWriter, body: kopf.Body, stopped: kopf.DaemonStopped
) -> None:
    while not stopped:
        generation = body.meta.get("generation")
        try:
            spec, grader = _load(body)
        except SpecError as exc:
            failed = lflow.Report(rl.LabelingPhase.FAILED, "InvalidSpec", f"invalid spec: {exc}")
            await _report(writer, failed, generation)
            await _wait_for_change(body, generation, stopped)
            continue
        try:
            await _run(rt, writer, body, spec, grader, stopped)
        except store_base.StoreUnavailableError as exc:
            # Shown in Ready (a Warning when it begins) and retried here, not by restarting the
            # daemon: the writer keeps Ready at StoreUnavailable until labels are written again.
            log.warning("RewardLabeling %s/%s: %s", body.meta.namespace, body.meta.name, exc)
            await writer.store_unavailable(generation, exc)
            await stopped.wait(rt.config.retry_delay)
        except k8s.Invalid as exc:
            # The API server refused a write (403 from RBAC, 422): retrying the same write will not
            # help, but a spec change may; a daemon that raised would never run again (kopf does
            # not restart a permanently failed daemon), so fail this generation and wait here.
            await _fail_until_changed(writer, body, generation, stopped, exc)
        finally:
            await grader.aclose()


# ----------------------------------------------------------------------------------------- stages


def _load(body: kopf.Body) -> tuple[rl.RewardLabelingSpec, graders.Grader]:
    spec = rl.parse_spec(body)
    try:
        return spec, graders.build_grader(lflow.grader_spec(spec))
    except graders.GraderBuildError as exc:
        raise SpecError([FieldProblem("spec.grader", str(exc))]) from None


async def _run(
    rt: common.Runtime,
    writer: common.StatusWriter,
    body: kopf.Body,
    spec: rl.RewardLabelingSpec,
    grader: graders.Grader,
    stopped: kopf.DaemonStopped,
) -> None:
    """Stages until the spec changes (or the daemon stops)."""
    generation = body.meta.get("generation")
    while not stopped and body.meta.get("generation") == generation:
        status = rl.parse_status({"status": writer.current})
        point = lflow.resume_point(spec, status, generation, datetime.now(UTC))
        if point.stage == lflow.Stage.WAIT_FOR_CHANGE:
            return await _wait_for_change(body, generation, stopped)
        if point.stage == lflow.Stage.WAIT_UNTIL and point.next_run is not None:
            await _wait_until(body, generation, stopped, point.next_run)
            continue
        if point.stage == lflow.Stage.SAMPLE:
            with common.timed_reconcile(rt, KIND, "sample_test"):
                result = await _sample_test(rt, grader, spec)
                report = lflow.sample_report(spec, result, generation)
                await _report(writer, report, generation)
            if report.phase == rl.LabelingPhase.PENDING:
                await _wait_until(body, generation, stopped, _seconds_from_now(_retry_seconds(rt)))
            continue
        with common.timed_reconcile(rt, KIND, "label_and_dry_run"):
            try:
                finished = await _label_and_dry_run(rt, writer, body, spec, grader, generation)
            except _SpecChanged:
                continue  # stopped for the new spec (its labels so far written): the loop ends
        if not finished:  # the grader's backend is down: label (resume) and dry-run again later
            await _wait_until(body, generation, stopped, _seconds_from_now(_retry_seconds(rt)))


async def _sample_test(
    rt: common.Runtime, grader: graders.Grader, spec: rl.RewardLabelingSpec
) -> labeling_pipeline.SampleTestResult:
    """The spec's sample test over its selection (also the probe of a grader's backend that was down)."""
    return await labeling_pipeline.sample_test(
        rt.store,
        grader,
        str(spec.agent_id),
        spec.sample_test.size,
        since=spec.selector.since,
        until=spec.selector.until,
        concurrency=spec.concurrency,
    )


class _SpecChanged(Exception):
    """The object's spec changed while a stage ran: the stage was stopped, not finished."""


async def _unless_spec_changes(body: kopf.Body, generation: int | None, work: Awaitable[T]) -> T:
    """Await ``work``, checking every ``POLL_SECONDS`` whether the spec changed: then cancel it (the
    labels it graded are written as it stops) and raise ``_SpecChanged``, so hours of judge calls
    for a grader the user already replaced are not spent, nor a verdict written for it."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=POLL_SECONDS)
            if done:
                return task.result()
            if body.meta.get("generation") != generation:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                raise _SpecChanged()
    finally:
        if not task.done():  # we were cancelled (the daemon stops): so is the work
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _label_and_dry_run(
    rt: common.Runtime,
    writer: common.StatusWriter,
    body: kopf.Body,
    spec: rl.RewardLabelingSpec,
    grader: graders.Grader,
    generation: int | None,
) -> bool:
    """Label, then dry-run; True when the verdict is written, False when the grader's backend
    failed on every episode the labeling or the dry run graded (``Ready`` then says so, the phase
    stays Labeling).

    While ``Ready`` holds such an outage, a few sample episodes are graded first (nothing written):
    episodes that failed because the judge was down are labeled again only once it answers, so a
    long outage does not use up their tries (``labeling.MAX_FAILED_ATTEMPTS``)."""
    if writer.held is not None and writer.held[0] == Reason.BACKEND_UNAVAILABLE:
        probe = await _sample_test(rt, grader, spec)
        if labeling_pipeline.backend_down(probe.records) is not None:
            return False
    latest: list[labeling_pipeline.LabelingProgress] = []
    if writer.current.get("phase") != rl.LabelingPhase.LABELING:
        # entering the phase; a run resumed in it (a retry, a restarted operator) keeps the
        # progress it showed until it has progress of its own
        await _report(writer, lflow.labeling_report(spec, None, generation), generation)
    before = await common.run_sync(lflow.count_labels, rt.store, spec, grader.name, grader.version)
    flush = functools.partial(_flush_progress, writer, spec, latest, generation, before)
    progress_task = asyncio.create_task(_every(POLL_SECONDS, flush))
    try:
        labeled = await _unless_spec_changes(
            body,
            generation,
            labeling_pipeline.label_batch(
                rt.store,
                grader,
                agent_id=str(spec.agent_id),
                unlabeled_only=spec.selector.unlabeled_only,
                limit=spec.selector.limit,
                since=spec.selector.since,
                until=spec.selector.until,
                concurrency=spec.concurrency,
                progress=latest.append,
                # labels reach the store (and status.labeled) every LABEL_WRITE_BATCH gradings, not
                # every 1,000: a judge grades a few a second
                write_batch_size=LABEL_WRITE_BATCH,
            ),
        )
    finally:
        progress_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await progress_task
    await flush()  # the final counts, shown during the dry run (minutes, with an LLM judge)
    if labeled.backend_down is not None:  # the judge never answered: no dry run against it either
        await writer.hold(generation, Reason.BACKEND_UNAVAILABLE, lflow.labeling_outage_message(labeled))
        return False
    dry = await _unless_spec_changes(
        body,
        generation,
        labeling_pipeline.dry_run(
            rt.store,
            grader,
            str(spec.agent_id),
            spec.dry_run.sample_size,
            spec.dry_run.healthy_ranges,
            since=spec.selector.since,
            until=spec.selector.until,
            concurrency=spec.concurrency,
        ),
    )
    down = labeling_pipeline.backend_down(dry.records)
    if down is not None:  # no verdict from a judge that is down
        await writer.hold(generation, Reason.BACKEND_UNAVAILABLE, lflow.dry_run_outage_message(dry, down))
        return False
    counts = await common.run_sync(lflow.count_labels, rt.store, spec, grader.name, grader.version)
    await _report(
        writer, lflow.completed_report(spec, counts, dry, generation, datetime.now(UTC)), generation
    )
    return True


def _retry_seconds(rt: common.Runtime) -> float:
    return max(rt.config.retry_delay, POLL_SECONDS)


async def _every(seconds: float, action: Callable[[], Awaitable[None]]) -> None:
    while True:
        await asyncio.sleep(seconds)
        await action()


async def _flush_progress(
    writer: common.StatusWriter,
    spec: rl.RewardLabelingSpec,
    latest: list[labeling_pipeline.LabelingProgress],
    generation: int | None,
    before: lflow.LabelCounts,
) -> None:
    """Write the newest progress ``label_batch`` reported, if any came since the last write."""
    if not latest:
        return
    last = latest[-1]
    latest.clear()
    if last.total == 0:
        return  # nothing left to label (a resumed run): the counts shown stay as they are
    if last.labeled:
        writer.release()  # labels were graded and written in this run: no outage
    await _report(writer, lflow.labeling_report(spec, last, generation, before), generation)


# ----------------------------------------------------------------------------------------- waiting


def _seconds_from_now(seconds: float) -> datetime:
    return datetime.fromtimestamp(datetime.now(UTC).timestamp() + seconds, UTC)


async def _wait_until(body: kopf.Body, generation: Any, stopped: kopf.DaemonStopped, when: datetime) -> None:
    while not stopped and body.meta.get("generation") == generation:
        left = (when - datetime.now(UTC)).total_seconds()
        if left <= 0:
            return
        await stopped.wait(min(left, POLL_SECONDS))


async def _fail_until_changed(
    writer: common.StatusWriter,
    body: kopf.Body,
    generation: int | None,
    stopped: kopf.DaemonStopped,
    exc: k8s.Invalid,
) -> None:
    log.error(
        "RewardLabeling %s/%s: the API server refused a write: %s", body.meta.namespace, body.meta.name, exc
    )
    try:
        await _report(writer, lflow.Report(rl.LabelingPhase.FAILED, "ApiRejected", str(exc)), generation)
    except k8s.Invalid:
        pass  # the status itself is what it refuses: the log line above is all a user gets
    await _wait_for_change(body, generation, stopped)


async def _wait_for_change(body: kopf.Body, generation: Any, stopped: kopf.DaemonStopped) -> None:
    while not stopped and body.meta.get("generation") == generation:
        await stopped.wait(POLL_SECONDS)


async def _report(writer: common.StatusWriter, report: lflow.Report, generation: int | None) -> None:
    fields = report.fields
    if writer.current.get("observedGeneration") not in (None, generation):
        # a new spec: the last one's figures and verdict must not stand for it (a FineTuneJob's
        # gate would open on a GO the new grader never gave)
        fields = {**lflow.CLEARED_ON_NEW_SPEC, **(fields or {})}
    await writer.write(
        generation,
        report.phase,
        report.reason,
        report.message,
        conditions=report.conditions,
        fields=fields,
    )
