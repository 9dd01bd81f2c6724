"""The trainer Job builder (``manifests.trainer_job``).

Covers: deterministic names that fit 63 characters (hashed when cut, distinct per FineTuneJob);
labels and the owner reference to the FineTuneJob; the restricted Pod Security profile, checked
rule by rule as the Pod Security admission's ``restricted`` level (v1.30) checks it; GPU (default
and custom resource name), memory and CPU requests equal to limits; nodeSelector and tolerations
from the spec; the model volume and the config path on it; round 0 runs ``evaluate``;
``backoffLimit``, ``activeDeadlineSeconds``, ``ttlSecondsAfterFinished``, ``restartPolicy: Never``
and the pod failure policy; and every built Job validates against the Kubernetes OpenAPI schema
(``kubernetes-validate``, strict: unknown fields fail).
"""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from lightning_op.api import finetune
from lightning_op.manifests import trainer_job

FTJ = {
    "apiVersion": "lightning-op.dev/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {"name": "ftj-1", "namespace": "demo", "uid": "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"},
}
OPTIONS = trainer_job.TrainerJobOptions(image="ghcr.io/lightning-op/trainer:0.1.0")
CONFIG = "/models/finetunejobs/demo/ftj-1-0f1e2d3c/round-1/trainer.yaml"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def _spec(**overrides: Any) -> finetune.FineTuneJobSpec:
    body = {
        "baseModel": "base/tiny-llama",
        "modelVolume": {"claimName": "models"},
        **overrides,
    }
    return finetune.parse_spec({"metadata": FTJ["metadata"], "spec": body})


def _job(round_number: int = 1, ftj: dict[str, Any] = FTJ, **spec: Any) -> dict[str, Any]:
    return trainer_job.build_trainer_job(ftj, _spec(**spec), round_number, OPTIONS, config_path=CONFIG)


def _pod(job: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = job["spec"]["template"]["spec"]
    return pod


def _container(job: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = _pod(job)["containers"][0]
    return container


# ------------------------------------------------------------------------------------------ names


def test_name_is_deterministic_and_per_round() -> None:
    assert _job(1)["metadata"]["name"] == "ftj-1-r1"
    assert _job(0)["metadata"]["name"] == "ftj-1-r0"
    assert _job(3) == _job(3)


@pytest.mark.parametrize("length", [50, 60, 63, 120, 253], ids=lambda n: f"name-{n}-chars")
def test_long_names_are_cut_and_hashed_to_fit_63(length: int) -> None:
    name = ("a" * (length - 2)) + "-x"
    other = ("a" * (length - 2)) + "-y"
    for round_number in (0, 1, 20):
        job = trainer_job.job_name(name, round_number)
        assert len(job) <= 63
        assert job.endswith(f"-r{round_number}")
        assert DNS_LABEL.match(job), job
        assert job == trainer_job.job_name(name, round_number)
        if len(name) + len(f"-r{round_number}") > 63:
            assert job != trainer_job.job_name(other, round_number)


def test_negative_round_is_refused() -> None:
    with pytest.raises(ValueError, match="round"):
        trainer_job.job_name("ftj", -1)


def test_label_values_fit_even_for_long_names() -> None:
    long = {**FTJ, "metadata": {**FTJ["metadata"], "name": "n" * 200}}
    labels = _job(1, long)["metadata"]["labels"]
    assert all(len(v) <= 63 for v in labels.values())
    assert labels[trainer_job.LABEL_FINETUNEJOB] != "n" * 63


# ------------------------------------------------------------------------------------------ ownership


def test_owner_reference_points_at_the_finetunejob() -> None:
    job = _job()
    assert job["metadata"]["namespace"] == "demo"
    assert job["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "lightning-op.dev/v1alpha1",
            "kind": "FineTuneJob",
            "name": "ftj-1",
            "uid": FTJ["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def test_labels_select_the_jobs_and_pods_of_one_finetunejob() -> None:
    job = _job(2)
    labels = job["metadata"]["labels"]
    assert labels[trainer_job.LABEL_FINETUNEJOB] == "ftj-1"
    assert labels[trainer_job.LABEL_FINETUNEJOB_UID] == FTJ["metadata"]["uid"]
    assert labels[trainer_job.LABEL_ROUND] == "2"
    assert labels["app.kubernetes.io/managed-by"] == "lightning-op"
    assert job["spec"]["template"]["metadata"]["labels"] == labels
    selector = dict(term.split("=") for term in trainer_job.label_selector(FTJ).split(","))
    assert selector.items() <= labels.items()


def test_body_without_uid_is_refused() -> None:
    ftj = copy.deepcopy(FTJ)
    del ftj["metadata"]["uid"]
    with pytest.raises(ValueError, match="uid"):
        _job(1, ftj)


# ------------------------------------------------------------------------------------------ security

ALLOWED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """The Pod Security Standards ``restricted`` level (baseline included), as the admission checks it."""
    problems = []
    pod_ctx = pod.get("securityContext") or {}
    containers = [*pod.get("initContainers", []), *pod["containers"]]
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            problems.append(f"{key} must not be true")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUME_TYPES:
            problems.append(f"volume {volume['name']} uses {kinds - ALLOWED_VOLUME_TYPES}")
    if pod_ctx.get("runAsUser") == 0:
        problems.append("pod runAsUser must not be 0")
    for c in containers:
        ctx = c.get("securityContext") or {}
        name = c["name"]
        if ctx.get("privileged"):
            problems.append(f"{name}: privileged")
        if ctx.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation must be false")
        caps = ctx.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            problems.append(f"{name}: capabilities must drop ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: only NET_BIND_SERVICE may be added")
        run_as_non_root = ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot"))
        if run_as_non_root is not True:
            problems.append(f"{name}: runAsNonRoot must be true")
        if ctx.get("runAsUser") == 0:
            problems.append(f"{name}: runAsUser must not be 0")
        seccomp = (ctx.get("seccompProfile") or pod_ctx.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile must be RuntimeDefault or Localhost")
        for port in c.get("ports", []):
            if port.get("hostPort"):
                problems.append(f"{name}: hostPort")
    return problems


def test_pod_meets_the_restricted_pod_security_profile() -> None:
    assert restricted_violations(_pod(_job())) == []
    assert restricted_violations(_pod(_job(0))) == []


def test_the_checker_catches_a_privileged_pod() -> None:
    pod = _pod(_job())
    pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    pod["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    assert len(restricted_violations(pod)) == 2


def test_root_filesystem_is_read_only_with_writable_tmp_and_shm() -> None:
    container = _container(_job())
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in _pod(_job())["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    assert {"name": "HOME", "value": "/tmp"} in container["env"]


def test_no_service_account_token_for_the_trainer() -> None:
    assert _pod(_job())["automountServiceAccountToken"] is False


# ------------------------------------------------------------------------------------------ placement


def test_gpu_memory_and_cpu_requests_equal_limits() -> None:
    job = _job(resources={"gpu": 2, "memory": "24Gi", "cpu": "8"})
    resources = _container(job)["resources"]
    assert resources["limits"] == {"nvidia.com/gpu": "2", "memory": "24Gi", "cpu": "8"}
    assert resources["requests"] == resources["limits"]


def test_custom_gpu_resource_name() -> None:
    job = _job(resources={"gpu": 1, "gpuResourceName": "amd.com/gpu"})
    assert _container(job)["resources"]["limits"] == {"amd.com/gpu": "1"}


def test_cpu_training_asks_for_no_gpu() -> None:
    assert "resources" not in _container(_job(resources={"gpu": 0}))


def test_node_selector_and_tolerations_from_spec() -> None:
    job = _job(
        resources={
            "nodeSelector": {"agentpool": "gpu", "kubernetes.azure.com/accelerator": "nvidia"},
            "tolerations": [
                {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"},
                {"key": "nvidia.com/gpu", "operator": "Exists"},
            ],
        }
    )
    pod = _pod(job)
    assert pod["nodeSelector"] == {"agentpool": "gpu", "kubernetes.azure.com/accelerator": "nvidia"}
    assert pod["tolerations"] == [
        {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"},
        {"key": "nvidia.com/gpu", "operator": "Exists"},
    ]


def test_defaults_set_no_node_selector_or_tolerations() -> None:
    pod = _pod(_job())
    assert "nodeSelector" not in pod and "tolerations" not in pod and "imagePullSecrets" not in pod


def test_image_pull_secrets_from_spec_let_a_private_trainer_image_be_pulled() -> None:
    pod = _pod(_job(resources={"imagePullSecrets": [{"name": "ghcr-pull"}, {"name": "acr-pull"}]}))
    assert pod["imagePullSecrets"] == [{"name": "ghcr-pull"}, {"name": "acr-pull"}]


def test_model_volume_is_mounted_at_models_and_holds_the_config() -> None:
    job = _job()
    volumes = {v["name"]: v for v in _pod(job)["volumes"]}
    assert volumes["models"] == {"name": "models", "persistentVolumeClaim": {"claimName": "models"}}
    assert {"name": "models", "mountPath": "/models"} in _container(job)["volumeMounts"]
    assert _container(job)["command"] == ["python", "-m", "lightning_op.trainer", "--config", CONFIG]


def test_config_outside_the_volume_is_refused() -> None:
    with pytest.raises(ValueError, match="model volume"):
        trainer_job.build_trainer_job(FTJ, _spec(), 1, OPTIONS, config_path="/etc/trainer.yaml")


def test_round_zero_evaluates_the_base_model() -> None:
    assert _container(_job(0))["command"] == [
        "python",
        "-m",
        "lightning_op.trainer",
        "evaluate",
        "--config",
        CONFIG,
    ]


# ------------------------------------------------------------------------------------------ job policy


def test_job_policy_fields() -> None:
    job = _job(activeDeadlineSeconds=7200)
    spec = job["spec"]
    assert spec["backoffLimit"] == OPTIONS.backoff_limit
    assert spec["activeDeadlineSeconds"] == 7200
    assert spec["ttlSecondsAfterFinished"] == OPTIONS.ttl_seconds_after_finished
    assert _pod(job)["restartPolicy"] == "Never"
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "FailJob"
    assert rules[0]["onExitCodes"]["values"] == [2, 3, 4, 5]
    assert rules[1] == {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }


def test_no_deadline_unless_the_spec_sets_one() -> None:
    assert "activeDeadlineSeconds" not in _job()["spec"]


# ------------------------------------------------------------------------------------------ schema

kubernetes_validate = pytest.importorskip("kubernetes_validate")


@pytest.mark.parametrize(
    "round_number,spec",
    [
        (0, {}),
        (1, {}),
        (
            2,
            {
                "resources": {
                    "gpu": 4,
                    "memory": "64Gi",
                    "cpu": "16",
                    "nodeSelector": {"pool": "a100"},
                    "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
                },
                "activeDeadlineSeconds": 3600,
            },
        ),
    ],
    ids=["baseline", "round-1", "gpu-placement-deadline"],
)
@pytest.mark.parametrize("version", ["1.30.0", "1.33.0"])
def test_job_validates_against_the_kubernetes_schema(
    round_number: int, spec: dict[str, Any], version: str
) -> None:
    job = _job(round_number, **spec)
    kubernetes_validate.validate(job, version, strict=True)
