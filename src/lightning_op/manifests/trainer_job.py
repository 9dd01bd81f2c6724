"""The trainer Job of one FineTuneJob round, as a dict.

``build_trainer_job`` returns a ``batch/v1`` Job: round 0 runs ``python -m lightning_op.trainer
evaluate --config FILE`` (the base model's baseline score), round k >= 1 runs ``python -m
lightning_op.trainer --config FILE`` (train, then score the adapter). The model volume
(``spec.modelVolume.claimName``) is mounted at ``/models``, and ``FILE`` is on it: the operator writes
each round's trainer config next to that round's outputs (``pipeline.finetune_flow``), so the adapter
directory keeps the exact config that made it, and a round costs one API write (the Job) rather than
two (a ConfigMap as well). The dataset snapshot is on the same volume anyway, so the trainer needs
nothing the volume does not already give it.

Why the Job looks the way it does:

- **Deterministic name** ``<ftj>-r<round>`` (cut and suffixed with a hash to fit 63 characters, the
  limit of the ``job-name`` label the Job controller puts on its pods): the controller creates the
  round's Job with create-or-adopt, so an operator restart never starts a second trainer for a round.
- **Owned** by the FineTuneJob (``controller: true``, ``blockOwnerDeletion``): deleting the
  FineTuneJob garbage-collects its Jobs and their pods on a real cluster.
- **Restricted Pod Security profile**: non-root with a fixed uid, no privilege escalation, every
  capability dropped, seccomp ``RuntimeDefault``, read-only root filesystem (``/tmp`` and
  ``/dev/shm`` are emptyDirs), no service account token (the trainer never calls the API).
- **Failures that retrying cannot fix fail the Job at once**: a ``podFailurePolicy`` turns the
  trainer's exit codes 2 (bad input), 3 (diverged), 4 (out of memory after halving the batch) and 5
  (evaluation failed) into ``FailJob``, while a disrupted pod (preemption, node drain) does not count
  against ``backoffLimit``; a retried pod resumes from the last checkpoint (``resumeFrom: auto``).
- ``ttlSecondsAfterFinished`` leaves the finished Job long enough for the operator to read the
  result; the trainer's status file on the model volume is the durable copy after that.

Pure functions over dicts and the parsed spec; nothing here talks to a cluster.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lightning_op.api import constants, finetune

#: where the model volume is mounted in the trainer container
MODELS_MOUNT = "/models"
CONTAINER_NAME = "trainer"
TRAINER_MODULE = "lightning_op.trainer"
#: Kubernetes limits: a label value, and so a Job name (its pods carry ``job-name=<name>``)
MAX_NAME_LENGTH = 63
#: trainer exit codes that a retry cannot fix (see ``trainer.__main__``)
PERMANENT_EXIT_CODES = (2, 3, 4, 5)

LABEL_NAME = "app.kubernetes.io/name"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_FINETUNEJOB = f"{constants.GROUP}/finetunejob"
LABEL_FINETUNEJOB_UID = f"{constants.GROUP}/finetunejob-uid"
LABEL_ROUND = f"{constants.GROUP}/round"
MANAGED_BY = "lightning-op"

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


@dataclass(frozen=True)
class TrainerJobOptions:
    """Operator-wide settings of every trainer Job (the spec holds the per-job ones)."""

    image: str
    image_pull_policy: str | None = None
    #: how long a finished Job stays; the operator reads its result well before that
    ttl_seconds_after_finished: int = 86_400
    #: pod retries for failures a retry can fix (node lost, SIGTERM after a checkpoint)
    backoff_limit: int = 2
    run_as_user: int = 1000
    run_as_group: int = 1000
    #: the trainer checkpoints on SIGTERM; give it time to finish writing
    termination_grace_period_seconds: int = 120
    service_account_name: str | None = None
    #: size of the in-memory ``/dev/shm`` (PyTorch data loader workers share tensors through it)
    shm_size: str = "1Gi"


def _hash(text: str, length: int = 8) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def fit_name(base: str, suffix: str = "", limit: int = MAX_NAME_LENGTH) -> str:
    """``base + suffix`` if it fits ``limit``, else ``base`` cut short plus ``-<hash of base>`` and
    ``suffix``: still deterministic, still unique per base, and ending in an alphanumeric."""
    if len(base) + len(suffix) <= limit:
        return base + suffix
    digest = _hash(base)
    keep = limit - len(suffix) - len(digest) - 1
    head = base[:keep].rstrip("-.")
    return f"{head}-{digest}{suffix}"


def job_name(ftj_name: str, round_number: int) -> str:
    """The Job (and ConfigMap) name of a round: ``<ftj>-r<round>``, at most 63 characters."""
    if round_number < 0:
        raise ValueError(f"round numbers start at 0 (the baseline), got {round_number}")
    return fit_name(ftj_name, f"-r{round_number}")


def label_value(text: str) -> str:
    """``text`` as a label value: itself when valid, else cleaned, cut and suffixed with its hash."""
    if len(text) <= MAX_NAME_LENGTH and _LABEL_VALUE.match(text):
        return text
    cleaned = re.sub(r"[^-A-Za-z0-9_.]", "-", text).strip("-_.")
    digest = _hash(text)
    head = cleaned[: MAX_NAME_LENGTH - len(digest) - 1].rstrip("-_.")
    return f"{head}-{digest}" if head else digest


def _meta(ftj: Mapping[str, Any]) -> tuple[str, str, str]:
    meta = ftj.get("metadata") or {}
    name, namespace, uid = meta.get("name"), meta.get("namespace"), meta.get("uid")
    if not name or not namespace or not uid:
        raise ValueError("the FineTuneJob body needs metadata.name, metadata.namespace and metadata.uid")
    return str(name), str(namespace), str(uid)


def selector_labels(ftj: Mapping[str, Any]) -> dict[str, str]:
    """Labels on every child of one FineTuneJob (its Jobs and their pods): a selector for them."""
    name, _, uid = _meta(ftj)
    return {
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_FINETUNEJOB: label_value(name),
        LABEL_FINETUNEJOB_UID: uid,
    }


def label_selector(ftj: Mapping[str, Any]) -> str:
    """``selector_labels`` as a ``labelSelector`` query string."""
    return ",".join(f"{key}={value}" for key, value in selector_labels(ftj).items())


def round_labels(ftj: Mapping[str, Any], round_number: int) -> dict[str, str]:
    return {
        LABEL_NAME: "lightning-op-trainer",
        LABEL_COMPONENT: "trainer",
        **selector_labels(ftj),
        LABEL_ROUND: str(round_number),
    }


def owner_reference(ftj: Mapping[str, Any]) -> dict[str, Any]:
    """The FineTuneJob as the controlling owner of a child object."""
    name, _, uid = _meta(ftj)
    return {
        "apiVersion": constants.API_VERSION,
        "kind": finetune.KIND,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def owner_uid(job: Mapping[str, Any]) -> str | None:
    """The uid of the FineTuneJob that controls a trainer Job: its controller ownerReference, else its
    ``finetunejob-uid`` label; None for a Job that carries neither."""
    meta = job.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == finetune.KIND:
            return str(ref.get("uid"))
    label = (meta.get("labels") or {}).get(LABEL_FINETUNEJOB_UID)
    return str(label) if label else None


def trainer_command(round_number: int, config_path: str) -> list[str]:
    """Round 0 scores the base model; every other round trains and then scores the adapter."""
    if round_number == 0:
        return ["python", "-m", TRAINER_MODULE, "evaluate", "--config", config_path]
    return ["python", "-m", TRAINER_MODULE, "--config", config_path]


def _resources(spec: finetune.ResourcesSpec) -> dict[str, Any]:
    amounts: dict[str, Any] = {}
    if spec.gpu > 0:
        amounts[spec.gpu_resource_name] = str(spec.gpu)
    if spec.memory:
        amounts["memory"] = spec.memory
    if spec.cpu:
        amounts["cpu"] = spec.cpu
    # Requests equal limits: an extended resource (GPU) must, and memory/CPU get Guaranteed QoS.
    return {"requests": dict(amounts), "limits": dict(amounts)} if amounts else {}


def _tolerations(spec: finetune.ResourcesSpec) -> list[dict[str, Any]]:
    return [t.to_json_dict() for t in spec.tolerations]


def _pod_failure_policy() -> dict[str, Any]:
    return {
        "rules": [
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": CONTAINER_NAME,
                    "operator": "In",
                    "values": list(PERMANENT_EXIT_CODES),
                },
            },
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]
    }


def _container(
    round_number: int, spec: finetune.FineTuneJobSpec, options: TrainerJobOptions, config_path: str
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": options.image,
        "command": trainer_command(round_number, config_path),
        "env": [
            {"name": "HOME", "value": "/tmp"},
            {"name": "XDG_CACHE_HOME", "value": "/tmp/.cache"},
            {"name": "MPLCONFIGDIR", "value": "/tmp/.matplotlib"},
            {"name": "PYTHONUNBUFFERED", "value": "1"},
            {"name": "HF_HUB_OFFLINE", "value": "1"},
        ],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": options.run_as_user,
            "runAsGroup": options.run_as_group,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": "models", "mountPath": MODELS_MOUNT},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if options.image_pull_policy:
        container["imagePullPolicy"] = options.image_pull_policy
    resources = _resources(spec.resources)
    if resources:
        container["resources"] = resources
    return container


def build_trainer_job(
    ftj: Mapping[str, Any],
    spec: finetune.FineTuneJobSpec,
    round_number: int,
    options: TrainerJobOptions,
    *,
    config_path: str,
) -> dict[str, Any]:
    """The ``batch/v1`` Job that runs one round (0: the baseline evaluation) of ``ftj``.

    ``ftj`` is the FineTuneJob object (its metadata name, namespace and uid are used);
    ``config_path`` is the round's trainer config file as the trainer sees it, on the model volume
    (under ``/models``). Raises ``ValueError`` without ``spec.modelVolume`` or with a config path
    outside the volume.
    """
    name, namespace, _ = _meta(ftj)
    if not config_path.startswith(f"{MODELS_MOUNT}/"):
        raise ValueError(
            f"the trainer config must be on the model volume (under {MODELS_MOUNT}/): {config_path}"
        )
    if spec.model_volume is None:
        raise ValueError("spec.modelVolume: Required value (the local backend trains on the model volume)")
    job = job_name(name, round_number)
    labels = round_labels(ftj, round_number)
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": options.termination_grace_period_seconds,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": options.run_as_user,
            "runAsGroup": options.run_as_group,
            "fsGroup": options.run_as_group,
            # A large model volume is not re-chowned on every start when its root already matches.
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_container(round_number, spec, options, config_path)],
        "volumes": [
            {"name": "models", "persistentVolumeClaim": {"claimName": spec.model_volume.claim_name}},
            {"name": "tmp", "emptyDir": {}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": options.shm_size}},
        ],
    }
    if options.service_account_name:
        pod_spec["serviceAccountName"] = options.service_account_name
    if spec.resources.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": ref.name} for ref in spec.resources.image_pull_secrets]
    if spec.resources.node_selector:
        pod_spec["nodeSelector"] = dict(spec.resources.node_selector)
    tolerations = _tolerations(spec.resources)
    if tolerations:
        pod_spec["tolerations"] = tolerations
    job_spec: dict[str, Any] = {
        "backoffLimit": options.backoff_limit,
        "ttlSecondsAfterFinished": options.ttl_seconds_after_finished,
        "podFailurePolicy": _pod_failure_policy(),
        "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
    }
    if spec.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job,
            "namespace": namespace,
            "labels": labels,
            "ownerReferences": [owner_reference(ftj)],
        },
        "spec": job_spec,
    }
