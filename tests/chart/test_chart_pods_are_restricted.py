"""Every pod the chart runs meets the restricted Pod Security Standard, with every value set.

Covers, per pod template (operator, collector) and per container: runAsNonRoot with a non-zero
user, allowPrivilegeEscalation false, every capability dropped (none added), seccomp RuntimeDefault,
not privileged, a read-only root filesystem; per pod: no host namespaces, ports or paths, only the
volume types the restricted profile allows; the operator's uid is the image's (operator/Dockerfile)
and its supplemental group is the trainer Jobs' gid (manifests/trainer_job.py), so both can write
on the model volume. The namespace label that enforces the profile is part of the install steps.
"""

from __future__ import annotations

from typing import Any

from lightning_op.manifests import trainer_job

#: volume types the restricted profile allows
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod["spec"]
    return [*spec.get("initContainers", []), *spec["containers"], *spec.get("ephemeralContainers", [])]


def test_there_are_pods(rendered: Any) -> None:
    names = [name for name, _ in rendered.pod_templates()]
    assert rendered.release in names
    assert (f"{rendered.release}-collector" in names) == rendered.values.get("collector", {}).get(
        "enabled", True
    )


def test_pods_run_as_non_root_with_runtime_default_seccomp(rendered: Any) -> None:
    for name, pod in rendered.pod_templates():
        pod_ctx = pod["spec"].get("securityContext", {})
        for container in _containers(pod):
            ctx = container.get("securityContext", {})
            where = f"{name}/{container['name']}"
            assert ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) is True, where
            assert ctx.get("runAsUser", pod_ctx.get("runAsUser")) not in (None, 0), where
            seccomp = ctx.get("seccompProfile", pod_ctx.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", where
            assert pod_ctx.get("seccompProfile", {}).get("type") in (None, "RuntimeDefault"), where


def test_containers_cannot_escalate(rendered: Any) -> None:
    for name, pod in rendered.pod_templates():
        for container in _containers(pod):
            ctx = container.get("securityContext", {})
            where = f"{name}/{container['name']}"
            assert ctx.get("allowPrivilegeEscalation") is False, where
            assert ctx.get("privileged", False) is False, where
            assert "ALL" in ctx.get("capabilities", {}).get("drop", []), where
            assert set(ctx.get("capabilities", {}).get("add", [])) <= {"NET_BIND_SERVICE"}, where
            assert ctx.get("readOnlyRootFilesystem") is True, where


def test_pods_use_no_host_resources(rendered: Any) -> None:
    for name, pod in rendered.pod_templates():
        spec = pod["spec"]
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(key), f"{name}: {key}"
        for volume in spec.get("volumes", []):
            kinds = set(volume) - {"name"}
            assert kinds <= RESTRICTED_VOLUMES, f"{name}: volume {volume['name']} is {kinds}"
        for container in _containers(pod):
            for port in container.get("ports", []):
                assert "hostPort" not in port, f"{name}/{container['name']}"
            assert not container.get("securityContext", {}).get("windowsOptions", {}).get("hostProcess")


def test_operator_shares_the_trainer_jobs_group(rendered: Any) -> None:
    pod = rendered.named("Deployment", rendered.release)["spec"]["template"]
    ctx = pod["spec"]["securityContext"]
    options = trainer_job.TrainerJobOptions(image="unused")
    assert ctx["runAsUser"] == 10001  # the USER of operator/Dockerfile (see test_chart_images.py)
    assert ctx["fsGroup"] == options.run_as_group
