"""What every controller shares: operator settings, the per-process runtime in kopf's ``memo``, status
writes that happen only when something changed, phase Events, and the error policy.

- ``configure`` (a ``kopf.on.startup`` handler) applies the operator settings (standalone, no peering,
  the group's finalizer and annotation prefix, explicit Events only) and puts a ``Runtime`` in the memo:
  a ``k8s.Cluster`` on the standard kubeconfig (in-cluster, else ``KUBECONFIG``), the episode store and
  the ``metrics.Metrics``. ``lightning-op operator`` passes its options in the memo
  (``memo.config``, ``memo.metrics``); under ``kopf run -m lightning_op.controllers`` they come from
  the environment (``OperatorConfig.from_env``: ``LIGHTNING_STORE``, ``LIGHTNING_COLLECTOR_URL``, ...).
- ``set_phase`` / ``update_status`` write through kopf's ``patch.status`` only what differs from the
  object's status (an unchanged object costs no write), and ``set_phase`` posts a Kubernetes Event on
  every phase change. ``permanent_spec_error`` turns a ``SpecError`` into phase Failed with a condition
  naming the field, and a ``kopf.PermanentError`` (no retries).
- ``instrumented(kind)`` wraps every handler: metrics (reconciles, latency, objects per phase) and the
  error policy: ``k8s.Unavailable`` and an unavailable store are ``kopf.TemporaryError`` with a delay,
  ``k8s.Invalid`` (the API server refused what we sent) is permanent.
- ``run_sync`` runs the synchronous kubernetes client and store off kopf's event loop.

Talks to ``k8s``, ``store``, ``api`` and ``metrics``; the per-kind modules talk to this one.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import logging
import math
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar, cast

import kopf

from lightning_op import k8s
from lightning_op import metrics as metrics_mod
from lightning_op import store as store_mod
from lightning_op.api import constants, kinds
from lightning_op.api.common import SpecError
from lightning_op.api.conditions import (
    Condition,
    ConditionStatus,
    ConditionType,
    Reason,
    conditions_to_json,
    get_condition,
    set_condition,
)
from lightning_op.manifests import trainer_job, workload_env
from lightning_op.store import base as store_base

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

# Environment of the operator process (``lightning-op operator`` options override them).
ENV_COLLECTOR_URL = "LIGHTNING_COLLECTOR_URL"
ENV_MODELS_DIR = "LIGHTNING_MODELS_DIR"
ENV_RETRY_DELAY = "LIGHTNING_RETRY_DELAY_SECONDS"
ENV_CAPTURE_SYNC = "LIGHTNING_CAPTURE_SYNC_SECONDS"
ENV_PROMOTION_POLL = "LIGHTNING_PROMOTION_POLL_SECONDS"

DEFAULT_COLLECTOR_URL = "http://lightning-op-collector.lightning-op.svc:8080"
#: the phase every kind calls its terminal failure
FAILED = "Failed"
#: phases in which an object reached its goal (the ``Ready`` condition is True)
READY_PHASES = frozenset({"Active", "Disabled", "Completed", "Succeeded", "Promoted"})
#: phases announced as Warning Events
WARNING_PHASES = frozenset({"Failed", "RolledBack"})
#: attempts at a read-modify-JSON-patch when the API server refuses the patch's ``test`` (a concurrent edit)
ENV_PATCH_ATTEMPTS = 3


def env_seconds(name: str, default: float) -> float:
    """A positive number of seconds from the environment (timer intervals are fixed at import time)."""
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        log.warning("ignoring %s=%r: not a number of seconds; using %s", name, raw, default)
        return default
    return value if value > 0 else default


@dataclass(frozen=True)
class OperatorConfig:
    """The operator's options, from ``lightning-op operator`` or the environment."""

    store_url: str | None = None
    collector_url: str = DEFAULT_COLLECTOR_URL
    models_dir: str | None = None
    #: delay before retrying after the API server or the store was unavailable, or a target was missing
    retry_delay: float = 30.0

    @classmethod
    def from_env(cls) -> OperatorConfig:
        return cls(
            store_url=os.environ.get(constants.ENV_STORE) or None,
            collector_url=os.environ.get(ENV_COLLECTOR_URL) or DEFAULT_COLLECTOR_URL,
            models_dir=os.environ.get(ENV_MODELS_DIR) or None,
            retry_delay=env_seconds(ENV_RETRY_DELAY, 30.0),
        )


class Waker:
    """Wakes one object's daemon early: a watch event about it (a spec change, a child Job that
    changed) sets it; the daemon waits on it between its ticks instead of polling the API."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        #: the generation the daemon last worked on: events that do not change it do not wake it
        self.generation: int | None = None

    def wake(self) -> None:
        self._event.set()

    def clear(self) -> None:
        self._event.clear()

    async def wait(self, stopped: kopf.DaemonStopped, timeout: float) -> None:
        """Until woken, stopped, or ``timeout`` seconds passed (``math.inf``: no timeout)."""
        if self._event.is_set() or stopped:
            return
        waits = {asyncio.ensure_future(self._event.wait()), asyncio.ensure_future(stopped.wait())}
        try:
            await asyncio.wait(
                waits, timeout=None if math.isinf(timeout) else timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for task in waits:
                task.cancel()


class Wakers:
    """The ``Waker`` of each object that has a running daemon, by uid."""

    def __init__(self) -> None:
        self._by_uid: dict[str, Waker] = {}

    def register(self, uid: str) -> Waker:
        return self._by_uid.setdefault(uid, Waker())

    def discard(self, uid: str) -> None:
        self._by_uid.pop(uid, None)

    def wants(self, uid: str | None, generation: int | None = None) -> bool:
        """Whether ``wake(uid, generation)`` would wake a daemon."""
        found = self._by_uid.get(uid or "")
        return found is not None and (generation is None or generation != found.generation)

    def wake(self, uid: str | None, generation: int | None = None) -> None:
        """Wake ``uid``'s daemon; with ``generation``, only when it differs from the one it worked on."""
        if self.wants(uid, generation):
            self._by_uid[uid or ""].wake()


@dataclass
class Runtime:
    """What handlers need, kept in kopf's memo (``runtime(memo)``), never in module globals."""

    config: OperatorConfig
    cluster: k8s.Cluster
    store: store_base.EpisodeStore
    metrics: metrics_mod.Metrics
    wakers: Wakers = field(default_factory=Wakers)
    #: child Jobs the watch reported finished, by (namespace, name): see ``finetune.remember_job``
    finished_jobs: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)


def runtime(memo: kopf.Memo) -> Runtime:
    """The ``Runtime`` that ``configure`` put in the memo."""
    found = runtime_if_ready(memo)
    if found is None:
        raise kopf.TemporaryError("the operator is not configured yet (startup did not finish)", delay=5)
    return found


def runtime_if_ready(memo: kopf.Memo) -> Runtime | None:
    """The ``Runtime``, or None before startup finished: for filters and watch-event handlers, which
    have nothing to do (and no retry) then."""
    found = memo.get("runtime")
    return found if isinstance(found, Runtime) else None


async def run_sync(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a blocking call (kubernetes client, store) in a worker thread, off kopf's event loop."""
    return await asyncio.to_thread(fn, *args, **kwargs)


# ----------------------------------------------------------------------------------------- startup


class _QuietHandlers(logging.Filter):
    """Drops kopf's "Handler 'X' succeeded." (or "Timer 'X' succeeded.") line for the handlers named
    in ``quiet``: watch-event handlers that only wake a daemon run on every event, timers on every
    tick of every object, and would fill the log."""

    def __init__(self) -> None:
        super().__init__()
        self.quiet: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.quiet or not isinstance(record.msg, str) or not record.msg.endswith("' succeeded."):
            return True
        return not any(
            record.msg == f"{what} {name!r} succeeded."
            for name in self.quiet
            for what in ("Handler", "Timer")
        )


_QUIET = _QuietHandlers()
logging.getLogger("kopf.objects").addFilter(_QUIET)


def quiet_success(fn: F) -> F:
    """Decorate a kopf handler (under its ``kopf.on`` decorator) whose successes are not logged."""
    _QUIET.quiet.add(fn.__name__)
    return fn


class LeanDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's annotation diffbase, with the same essence built for less: kopf builds it on every
    watch event by deep-copying the whole body, then dropping ``status`` and all of ``metadata``
    but labels and annotations. This copies only what it keeps (a FineTuneJob's status, with its
    rounds and conditions, is most of the body)."""

    def build(self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None) -> kopf.BodyEssence:
        if extra_fields:
            return super().build(body=body, extra_fields=extra_fields)  # they may pick from status
        meta = body.get("metadata") or {}
        kept = {key: value for key, value in body.items() if key not in ("metadata", "status")}
        kept["metadata"] = {key: meta[key] for key in ("labels", "annotations") if key in meta}
        return super().build(body=kopf.Body(cast(kopf.RawBody, kept)))


def apply_settings(settings: kopf.OperatorSettings) -> None:
    """One replica, no peering; our finalizer and annotation prefix; Events only when we post them."""
    settings.peering.standalone = True
    settings.peering.mandatory = False
    settings.persistence.finalizer = constants.FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=constants.GROUP)
    settings.persistence.diffbase_storage = LeanDiffBaseStorage(
        prefix=constants.GROUP, key="last-handled-configuration"
    )
    settings.posting.enabled = True
    settings.posting.loggers = False  # handler logs stay in the operator's log, not in Events
    settings.posting.level = logging.INFO
    settings.posting.reporting_component = constants.FIELD_MANAGER
    settings.posting.reporting_instance = socket.gethostname()
    settings.posting.event_name_prefix = f"{constants.FIELD_MANAGER}-"
    # Trainer Jobs are the one built-in kind watched: the API server sends only ours, so a cluster's
    # other Jobs never reach the operator (the handler's ``labels=`` filters after they arrived).
    settings.watching.label_selectors["batch", "jobs"] = (
        f"{trainer_job.LABEL_MANAGED_BY}={trainer_job.MANAGED_BY}"
    )
    # Watches end server-side before the client gives up, so a dead connection is noticed quickly.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.watching.reconnect_backoff = 1.0
    settings.networking.connect_timeout = 10
    settings.networking.request_timeout = 60
    # Events of one object that arrive together are handled once, on the latest body.
    settings.queueing.idle_timeout = 5.0
    # A stopping daemon (its object deleted) gets this long to finish its cleanup before kopf falls
    # back to re-checking it every few seconds: a FineTuneJob's cleanup (deleting its trainer Jobs)
    # fits, so the finalizer goes in the same pass.
    settings.background.instant_exit_timeout = 5.0


def open_runtime(config: OperatorConfig, metrics: metrics_mod.Metrics) -> Runtime:
    """Connect to the cluster (in-cluster config, else the standard kubeconfig) and open the store."""
    cluster = k8s.Cluster(k8s.load_api_client())
    store = store_mod.open_store(config.store_url)
    return Runtime(config=config, cluster=cluster, store=store, metrics=metrics)


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    apply_settings(settings)
    config = memo.get("config")
    if not isinstance(config, OperatorConfig):
        config = OperatorConfig.from_env()
    metrics = memo.get("metrics")
    if not isinstance(metrics, metrics_mod.Metrics):
        metrics = metrics_mod.Metrics()
    memo.runtime = await run_sync(open_runtime, config, metrics)
    logger.info("lightning-op operator: store %s, collector %s", memo.runtime.store.url, config.collector_url)


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    found = runtime_if_ready(memo)
    if found is not None:
        await run_sync(found.store.close)


# ----------------------------------------------------------------------------------------- status


def merge_patch(old: Any, new: Any) -> Any:
    """The RFC 7386 merge patch that turns ``old`` into ``new`` (what kopf sends for ``patch.status``)."""
    if not isinstance(old, Mapping) or not isinstance(new, Mapping):
        return copy.deepcopy(new)
    out: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        if key in old:
            if old[key] != value:
                out[key] = merge_patch(old[key], value)
        elif value is not None:
            out[key] = copy.deepcopy(value)
    return out


def _apply_merge(target: Any, patch: Any) -> Any:
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _apply_merge(result.get(key), value)
    return result


def current_status(body: Mapping[str, Any], patch: kopf.Patch) -> dict[str, Any]:
    """The object's status as it will be once kopf applies ``patch`` (status writes already queued)."""
    status = body.get("status") or {}
    pending = patch.get("status") or {}
    merged: dict[str, Any] = _apply_merge(status, pending)
    return merged


def _without_nulls(value: Any) -> Any:
    """``value`` with None members of mappings dropped: in a merge patch, and so in the stored object,
    a null member is an absent one, and comparing with it would see a change on every call."""
    if isinstance(value, Mapping):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    return value


def update_status(body: Mapping[str, Any], patch: kopf.Patch, fields: Mapping[str, Any]) -> bool:
    """Queue in ``patch.status`` the fields whose value differs (None removes a field). True if any did."""
    current = current_status(body, patch)
    stored = body.get("status") or {}
    changed = False
    for key, value in fields.items():
        value = _without_nulls(value)
        if current.get(key) == value or (value is None and key not in current):
            continue
        # Relative to the stored status, which kopf's merge patch applies to (it replaces what an
        # earlier call in this handler queued for the same key).
        patch.status[key] = merge_patch(stored[key], value) if key in stored else value
        changed = True
    return changed


def _generation(body: Mapping[str, Any]) -> int | None:
    generation = (body.get("metadata") or {}).get("generation")
    return int(generation) if isinstance(generation, int) else None


def phase_conditions(
    phase: str, reason: str, message: str, generation: int | None, *, ready: bool | None = None
) -> list[Condition]:
    """``Ready`` (True in a goal phase unless ``ready`` says otherwise) and, in phase Failed,
    ``Failed`` True with the reason."""
    if ready is None:
        ready = phase in READY_PHASES
    status = ConditionStatus.TRUE if ready else ConditionStatus.FALSE
    found = [
        Condition(
            type=ConditionType.READY,
            status=status,
            reason=reason,
            message=message,
            observed_generation=generation,
        )
    ]
    if phase == FAILED:
        found.append(
            Condition(
                type=ConditionType.FAILED,
                status=ConditionStatus.TRUE,
                reason=reason,
                message=message,
                observed_generation=generation,
            )
        )
    return found


def set_phase(
    body: kopf.Body,
    patch: kopf.Patch,
    phase: str,
    reason: str,
    message: str,
    *,
    conditions: Iterable[Condition] = (),
    fields: Mapping[str, Any] | None = None,
    ready: bool | None = None,
) -> bool:
    """Write ``phase``, ``observedGeneration``, the ``Ready``/``Failed`` conditions plus ``conditions``
    and ``fields`` into ``patch.status`` where they differ from the object's status; post an Event
    (Warning for Failed and RolledBack) when the phase changes, and a Warning when ``Ready`` starts
    reporting an outage (``OUTAGE_REASONS``; said once, not on every retry). Returns whether
    anything changed. ``Ready`` is True in a goal phase (``READY_PHASES``) unless ``ready`` is given.

    ``lastTransitionTime`` moves only when a condition's status flips (``set_condition``), so calling
    this again with the same arguments changes nothing and writes nothing."""
    current = current_status(body, patch)
    generation = _generation(body)
    merged: list[Any] = list(current.get("conditions") or [])
    wanted = phase_conditions(phase, reason, message, generation, ready=ready)
    before = get_condition(merged, ConditionType.READY)
    failed = get_condition(merged, ConditionType.FAILED)
    if phase != FAILED and failed is not None and failed.status == ConditionStatus.TRUE:
        wanted.append(
            failed.model_copy(
                update={
                    "status": ConditionStatus.FALSE,
                    "reason": reason,
                    "message": message,
                    "observed_generation": generation,
                }
            )
        )
    for condition in [*wanted, *conditions]:
        merged = list(set_condition(merged, condition))
    desired: dict[str, Any] = {
        "phase": str(phase),
        "observedGeneration": generation,
        "conditions": conditions_to_json(merged),
        **(fields or {}),
    }
    old_phase = current.get("phase")
    changed = update_status(body, patch, desired)
    if old_phase != str(phase):
        post = kopf.warn if str(phase) in WARNING_PHASES else kopf.info
        post(body, reason=str(reason), message=f"{old_phase or 'New'} -> {phase}: {message}"[:1024])
    if reason in OUTAGE_REASONS and (before is None or before.reason != reason):
        kopf.warn(body, reason=str(reason), message=message[:1024])
    return changed


def store_outage_message(exc: Exception, retry_delay: float) -> str:
    """``Ready``'s message while the episode store is unavailable: the store's own error."""
    return f"the episode store is unavailable: {exc}; retrying every {retry_delay:g} s"


def hold_for_store(body: kopf.Body, patch: kopf.Patch, exc: Exception, retry_delay: float) -> None:
    """The episode store failed a handler: ``Ready`` False with reason ``StoreUnavailable`` and the
    store's message, the phase and the rest of the status kept (``set_phase`` posts the Warning when
    the outage begins). Nothing for an object without a phase yet."""
    phase = current_status(body, patch).get("phase")
    if phase:
        message = store_outage_message(exc, retry_delay)
        set_phase(body, patch, str(phase), Reason.STORE_UNAVAILABLE, message, ready=False)


def store_outage(status: Mapping[str, Any]) -> str | None:
    """The message of ``Ready`` when it says the store is unavailable, else None."""
    held = outage(status)
    return held[1] if held is not None and held[0] == Reason.STORE_UNAVAILABLE else None


#: ``Ready`` reasons of an outage something else has to end (the episode store, a grader's backend)
OUTAGE_REASONS = frozenset({Reason.STORE_UNAVAILABLE, Reason.BACKEND_UNAVAILABLE, Reason.RECONCILE_ERROR})


def outage(status: Mapping[str, Any]) -> tuple[str, str] | None:
    """``Ready``'s reason and message when it reports an outage (``OUTAGE_REASONS``), else None."""
    ready = get_condition(status.get("conditions") or [], ConditionType.READY)
    if ready is None or ready.reason not in OUTAGE_REASONS:
        return None
    return str(ready.reason), ready.message or ""


def permanent_spec_error(body: kopf.Body, patch: kopf.Patch, exc: SpecError) -> kopf.PermanentError:
    """Phase Failed with reason InvalidSpec and a message naming the field; raise what this returns."""
    set_phase(body, patch, FAILED, Reason.INVALID_SPEC, f"invalid spec: {exc}")
    return kopf.PermanentError(f"invalid spec: {exc}")


def failed_for_generation(body: Mapping[str, Any]) -> bool:
    """Whether the object already failed for its current spec (timers skip it: no retry storm)."""
    status = body.get("status") or {}
    return bool(status.get("phase") == FAILED and status.get("observedGeneration") == _generation(body))


class StatusWriter:
    """Writes a daemon's status with ``set_phase`` semantics (only what changed; an Event on a phase
    change) through ``Cluster.patch_custom_status``: a daemon outlives kopf's per-call patch. It keeps
    the status it wrote as the current one, because the daemon's ``body`` is updated by the watch,
    which may lag behind our own writes (we are the only writer of the status).

    An outage (``hold``: the store, ``store_unavailable``, or a grader's backend) holds ``Ready`` at
    its reason through the writes that follow in the same phase, until ``release`` or a phase
    change: a retry that reports its progress again does not flip ``Ready`` back and forth, nor
    post a Warning each time."""

    def __init__(self, rt: Runtime, body: kopf.Body, kind: str) -> None:
        self.rt = rt
        self.body = body
        self.kind = kind
        self.plural = kinds.kind_info(kind).plural
        self.current: dict[str, Any] = dict(body.get("status") or {})
        #: ``Ready``'s reason and message during an outage (also after an operator restart)
        self.held: tuple[str, str] | None = outage(self.current)
        phase = self.current.get("phase")
        if phase:
            # a restarted operator counts the objects it finds settled (they write nothing more)
            rt.metrics.observe_phase(kind, str(body.meta.namespace), str(body.meta.name), str(phase))
            rt.metrics.observe_figures(kind, str(body.meta.namespace), str(body.meta.name), self.current)

    def view(self, generation: int | None) -> kopf.Body:
        """The object with the status we wrote last, at ``generation``: the one the daemon worked on,
        not the live one, so that a spec changed mid-run is run again."""
        metadata = {**dict(self.body.get("metadata") or {}), "generation": generation}
        raw: dict[str, Any] = {
            "apiVersion": self.body.get("apiVersion") or constants.API_VERSION,
            "kind": self.body.get("kind") or self.kind,
            "metadata": metadata,
            "status": self.current,
        }
        return kopf.Body(cast(kopf.RawBody, raw))

    async def write(
        self,
        generation: int | None,
        phase: str,
        reason: str,
        message: str,
        *,
        conditions: Iterable[Condition] = (),
        fields: Mapping[str, Any] | None = None,
    ) -> bool:
        """``set_phase`` on the current status, then one merge patch of what changed. True if it wrote."""
        ready: bool | None = None
        if self.held is not None:
            if phase == self.current.get("phase"):
                (reason, message), ready = self.held, False
                conditions = [c for c in conditions if c.type != ConditionType.READY]
            else:
                self.held = None  # the work moved on: the outage is over
        view = self.view(generation)
        patch = kopf.Patch()
        set_phase(view, patch, phase, reason, message, conditions=conditions, fields=fields, ready=ready)
        changes = dict(patch.get("status") or {})
        meta = self.body.meta
        self.rt.metrics.observe_phase(self.kind, str(meta.namespace), str(meta.name), phase)
        if not changes:
            return False
        await run_sync(
            self.rt.cluster.patch_custom_status, self.plural, str(meta.namespace), str(meta.name), changes
        )
        self.current = current_status(view, patch)
        self.rt.metrics.observe_figures(self.kind, str(meta.namespace), str(meta.name), self.current)
        return True

    async def hold(self, generation: int | None, reason: str, message: str) -> None:
        """``Ready`` False with ``reason`` (one of ``OUTAGE_REASONS``) and ``message``, the phase
        kept (nothing before the first phase), until ``release`` or a phase change; ``set_phase``
        posts the Warning when it begins."""
        phase = self.current.get("phase")
        if phase:
            self.held = (reason, message)
            await self.write(generation, str(phase), reason, message)

    async def store_unavailable(self, generation: int | None, exc: Exception) -> None:
        """``hold`` with reason ``StoreUnavailable`` and the store's message."""
        message = store_outage_message(exc, self.rt.config.retry_delay)
        await self.hold(generation, Reason.STORE_UNAVAILABLE, message)

    def release(self) -> None:
        """The outage is over (the store, or the grader, did its work again): the next ``write``
        sets ``Ready`` as it says."""
        self.held = None


# ----------------------------------------------------------------------------------------- handlers


@contextlib.contextmanager
def timed_reconcile(rt: Runtime, kind: str, handler: str) -> Iterator[None]:
    """Count and time one reconcile of ``kind`` as ``handler``, with its outcome: ``retry`` (the API
    server or the store unavailable, a ``kopf.TemporaryError``), ``failed`` (refused by the API
    server, a ``kopf.PermanentError``), ``error`` (anything else raised) or ``ok``."""
    started = time.monotonic()
    outcome = "ok"
    try:
        yield
    except (k8s.Unavailable, store_base.StoreUnavailableError, kopf.TemporaryError):
        outcome = "retry"
        raise
    except (k8s.Invalid, kopf.PermanentError):
        outcome = "failed"
        raise
    except Exception:
        outcome = "error"
        raise
    finally:
        rt.metrics.observe_reconcile(kind, handler, outcome, time.monotonic() - started)


def instrumented(kind: str) -> Callable[[F], F]:
    """Decorate a kopf handler of ``kind``: count and time it, track the object's phase, map errors.

    ``k8s.Unavailable`` and ``StoreUnavailableError`` become ``kopf.TemporaryError`` after
    ``config.retry_delay`` seconds (a store outage also shows in ``Ready``: ``hold_for_store``);
    ``k8s.Invalid`` sets phase Failed (reason ``ApiRejected``) and
    becomes ``kopf.PermanentError``. Handlers raise ``kopf`` errors themselves for everything else."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        async def handler(**kwargs: Any) -> Any:
            rt = runtime(kwargs["memo"])
            body: kopf.Body = kwargs["body"]
            patch: kopf.Patch = kwargs["patch"]
            try:
                with timed_reconcile(rt, kind, fn.__name__):
                    try:
                        return await fn(**kwargs)
                    except store_base.StoreUnavailableError as exc:
                        hold_for_store(body, patch, exc, rt.config.retry_delay)
                        raise kopf.TemporaryError(str(exc), delay=rt.config.retry_delay) from exc
                    except k8s.Unavailable as exc:
                        raise kopf.TemporaryError(str(exc), delay=rt.config.retry_delay) from exc
                    except k8s.Invalid as exc:
                        set_phase(body, patch, FAILED, "ApiRejected", str(exc))
                        raise kopf.PermanentError(str(exc)) from exc
            finally:
                meta = body.get("metadata") or {}
                deleted = str(kwargs.get("reason") or "") == "delete"
                phase = None if deleted else current_status(body, patch).get("phase")
                rt.metrics.observe_phase(kind, str(meta.get("namespace")), str(meta.get("name")), phase)

        return cast(F, handler)

    return decorate


# ----------------------------------------------------------------------------------------- workloads


class TargetMissing(Exception):
    """The target Deployment (or its container) does not exist; the message says which, ``reason`` is
    ``TargetNotFound`` or ``ContainerNotFound``."""

    def __init__(self, message: str, reason: Reason = Reason.TARGET_NOT_FOUND) -> None:
        super().__init__(message)
        self.reason = reason


def patch_workload_env(
    cluster: k8s.Cluster,
    namespace: str,
    name: str,
    build_ops: Callable[[Mapping[str, Any]], list[dict[str, Any]]],
) -> tuple[dict[str, Any], bool]:
    """Read the Deployment, build JSON-patch ops from it, send them; re-read and retry when a ``test``
    op fails (someone wrote the Deployment in between). Returns (deployment after, whether it was
    patched). A ``test`` failing on every try is ``k8s.Unavailable`` (retried on a later tick, never
    a permanent failure); any other refusal (an admission webhook's) is ``k8s.Invalid`` at once.

    Raises ``TargetMissing`` for a missing Deployment or container (``build_ops`` raising
    ``workload_env.ContainerNotFoundError``)."""
    for attempt in range(1, ENV_PATCH_ATTEMPTS + 1):
        deployment = cluster.get_deployment(namespace, name)
        if deployment is None:
            raise TargetMissing(f"Deployment {namespace}/{name} not found")
        try:
            ops = build_ops(deployment)
        except workload_env.ContainerNotFoundError as exc:
            raise TargetMissing(f"Deployment {namespace}/{name}: {exc}", Reason.CONTAINER_NOT_FOUND) from exc
        if not ops:
            return deployment, False
        try:
            return cluster.json_patch_deployment(namespace, name, ops), True
        except k8s.PatchTestFailed as exc:
            if attempt == ENV_PATCH_ATTEMPTS:
                # a busy Deployment (its status is written on every pod change of a rollout): try
                # again on a later tick rather than give up on what must be written (a rollback)
                raise k8s.Unavailable(
                    f"Deployment {namespace}/{name} changed between reading and patching it "
                    f"{ENV_PATCH_ATTEMPTS} times in a row; trying again later ({exc})"
                ) from exc
            log.info("Deployment %s/%s changed while we patched its env; retrying", namespace, name)
        except k8s.NotFound as exc:
            raise TargetMissing(f"Deployment {namespace}/{name} not found") from exc
    raise AssertionError("unreachable")
