"""EpisodeCapture controller: capture env on the agent's Deployment, and the store's figures in status.

- create / resume / spec update: JSON-patch the target container's env with the capture variables
  (``pipeline.capture_sync.capture_env``; removed when ``enabled: false``), touching no other env or
  container, then phase Active (or Disabled). A missing Deployment or container is phase Pending with a
  ``TargetNotFound``/``ContainerNotFound`` condition and a retry after ``config.retry_delay`` seconds.
  A retarget removes the variables from the old target first.
- delete (finalizer): remove the capture variables from the target.
- timer (``LIGHTNING_CAPTURE_SYNC_SECONDS``, default 30): ``episodesCaptured`` and ``lastEpisodeTime``
  from the store, written only when they changed; ``retention.ttlDays`` purges old episodes (at most
  every ``PURGE_EVERY_S``).

Talks to ``controllers.common``, ``pipeline.capture_sync``, ``manifests.workload_env`` and ``api``.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import kopf

from lightning_op.api import capture, constants, kinds
from lightning_op.api.common import SpecError
from lightning_op.api.conditions import Condition, ConditionStatus, ConditionType, Reason
from lightning_op.controllers import common
from lightning_op.manifests import workload_env
from lightning_op.pipeline import capture_sync

KIND = capture.KIND
RESOURCE = (constants.GROUP, constants.VERSION, kinds.kind_info(KIND).plural)
SYNC_SECONDS = common.env_seconds(common.ENV_CAPTURE_SYNC, 30.0)
#: retention purges take the store's write lock; once per object every ten minutes is plenty
PURGE_EVERY_S = 600.0


def _parse(body: kopf.Body, patch: kopf.Patch) -> capture.EpisodeCaptureSpec:
    try:
        return capture.parse_spec(body)
    except SpecError as exc:
        raise common.permanent_spec_error(body, patch, exc) from None


async def _apply_env(
    rt: common.Runtime, namespace: str | None, target: capture_sync.Target, desired: dict[str, str | None]
) -> str:
    """Patch the target container's env to ``desired``; returns the container's name."""
    build = functools.partial(workload_env.env_patch, container=target.container, desired=desired)
    deployment, _ = await common.run_sync(
        common.patch_workload_env, rt.cluster, str(namespace), target.name, lambda d: build(d)
    )
    return str(workload_env.find_container(deployment, target.container)[1].get("name"))


def _capture_condition(enabled: bool, reason: str, message: str, body: kopf.Body) -> Condition:
    return Condition(
        type=ConditionType.CAPTURE_ENABLED,
        status=ConditionStatus.TRUE if enabled else ConditionStatus.FALSE,
        reason=reason,
        message=message,
        observed_generation=body.meta.get("generation"),
    )


def _report(body: kopf.Body, patch: kopf.Patch, spec: capture.EpisodeCaptureSpec, container: str) -> None:
    where = f"Deployment {spec.target_ref.name} container {container}"
    if spec.enabled:
        phase, reason, message = (
            capture.CapturePhase.ACTIVE,
            Reason.CAPTURE_ENABLED,
            f"capture env set on {where}",
        )
    else:
        phase, reason, message = (
            capture.CapturePhase.DISABLED,
            Reason.CAPTURE_DISABLED,
            f"no capture env on {where}",
        )
    condition = _capture_condition(spec.enabled, reason, message, body)
    common.set_phase(
        body, patch, phase, reason, message, conditions=[condition], fields={"container": container}
    )


def _pending(
    body: kopf.Body, patch: kopf.Patch, rt: common.Runtime, exc: common.TargetMissing
) -> kopf.TemporaryError:
    message = f"{exc}; retrying every {rt.config.retry_delay:g} s"
    condition = _capture_condition(False, exc.reason, message, body)
    common.set_phase(body, patch, capture.CapturePhase.PENDING, exc.reason, message, conditions=[condition])
    return kopf.TemporaryError(str(exc), delay=rt.config.retry_delay)


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE, field="spec")
@common.instrumented(KIND)
async def reconcile_capture(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, namespace: str | None, old: Any = None, **_: Any
) -> None:
    rt = common.runtime(memo)
    spec = _parse(body, patch)
    # The container the env went to (status.container): with no container in the spec, "the first"
    # may be another one today (a sidecar added in front), and the env must follow the one that has it.
    recorded = str((body.get("status") or {}).get("container") or "") or None
    abandoned = capture_sync.abandoned_target(old, spec)
    if abandoned is not None:
        if abandoned.container is None and recorded:
            abandoned = capture_sync.Target(abandoned.name, recorded)
        try:
            await _apply_env(rt, namespace, abandoned, capture_sync.removal_env())
        except common.TargetMissing:
            pass  # the old target is gone: nothing to clean up
    target = capture_sync.target_of(spec)
    if target.container is None and recorded and abandoned is None:
        target = capture_sync.Target(target.name, recorded)
    desired = capture_sync.capture_env(spec, rt.config.collector_url)
    try:
        try:
            container = await _apply_env(rt, namespace, target, desired)
        except common.TargetMissing as exc:
            if target == capture_sync.target_of(spec) or exc.reason != Reason.CONTAINER_NOT_FOUND:
                raise
            # the recorded container is gone: the first one, as the spec says
            container = await _apply_env(rt, namespace, capture_sync.target_of(spec), desired)
    except common.TargetMissing as exc:
        if spec.enabled:
            raise _pending(body, patch, rt, exc) from None
        container = spec.target_ref.container or ""
    _report(body, patch, spec, container)


@kopf.on.delete(*RESOURCE)
@common.instrumented(KIND)
async def remove_capture(
    body: kopf.Body, memo: kopf.Memo, namespace: str | None, logger: kopf.Logger, **_: Any
) -> None:
    target = capture_sync.raw_target(body.get("spec"))
    if target is None:
        return
    container = (body.get("status") or {}).get("container") or target.container
    try:
        await _apply_env(
            common.runtime(memo),
            namespace,
            capture_sync.Target(target.name, container),
            capture_sync.removal_env(),
        )
    except common.TargetMissing as exc:
        logger.info("capture env not removed, nothing to remove from: %s", exc)


def _reconciled(body: kopf.Body, **_: Any) -> bool:
    """The timer's filter: not before the create handler reconciled the object, nor while it failed
    for this spec (the handlers report those); such ticks would only be counted and logged."""
    return bool((body.get("status") or {}).get("phase")) and not common.failed_for_generation(body)


@kopf.timer(*RESOURCE, interval=SYNC_SECONDS, when=_reconciled)
@common.quiet_success
@common.instrumented(KIND)
async def sync_capture_figures(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    try:
        spec = capture.parse_spec(body)
    except SpecError:
        return
    rt = common.runtime(memo)
    if time.monotonic() - memo.get("purged_at", -PURGE_EVERY_S) >= PURGE_EVERY_S:
        await common.run_sync(capture_sync.purge_expired, rt.store, spec)
        memo["purged_at"] = time.monotonic()  # a purge the store refused is tried on the next tick
    figures = await common.run_sync(capture_sync.store_figures, rt.store, str(spec.agent_id))
    status = common.current_status(body, patch)
    if common.store_outage(status) is not None and status.get("phase") in _SETTLED:
        _report(body, patch, spec, str(status.get("container") or spec.target_ref.container or ""))
    common.update_status(body, patch, figures)


#: the phases whose Ready ``_report`` writes (a store outage ends there: the timer puts Ready back)
_SETTLED = frozenset({capture.CapturePhase.ACTIVE, capture.CapturePhase.DISABLED})
