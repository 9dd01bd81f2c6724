"""The operator and collector Deployments run the commands, ports, probes and volumes the code expects.

Covers: the operator runs exactly one replica with the Recreate strategy (two kopf operators would
race), its probes ask /healthz on the --metrics-port it serves, it watches every namespace by default
or exactly operator.watchNamespaces, and it gets the store URL, the collector Service's URL, the
trainer image and the model volume (a ReadWriteMany claim of the StorageClass the values name, or
the existing claim); the collector runs `lightning-op collector` on its port with probes on /healthz
and /readyz, and its Service targets that port; the store is SQLite (the only store of this build),
one claim mounted by both, and the collector is pinned to one replica (Recreate) on the operator's
node; claims outlive the release unless persistence.keep is off; a token Secret becomes
--token-file; placement values reach the pods; NOTES.txt tells the next steps; every container's
args parse with the real `lightning-op` command line (with the container's env in place), and every
env var the templates set is one the code reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import pytest

from lightning_op import cli
from lightning_op.store import redaction


def _operator(rendered: Any) -> dict[str, Any]:
    return rendered.named("Deployment", rendered.release)


def _collector(rendered: Any) -> dict[str, Any]:
    return rendered.named("Deployment", f"{rendered.release}-collector")


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def _port(container: dict[str, Any], name: str) -> int:
    return next(int(p["containerPort"]) for p in container["ports"] if p["name"] == name)


def _probe_port(container: dict[str, Any], probe: str) -> int:
    port = container[probe]["httpGet"]["port"]
    return _port(container, port) if isinstance(port, str) else int(port)


def _flag(args: list[str], name: str) -> str | None:
    return next((a.split("=", 1)[1] for a in args if a.startswith(f"{name}=")), None)


def _enabled(rendered: Any, section: str, default: bool = True) -> bool:
    return bool(rendered.values.get(section, {}).get("enabled", default))


def _store_type(rendered: Any) -> str:
    return str(rendered.values.get("store", {}).get("type", "sqlite"))


def test_operator_runs_one_replica_with_recreate(rendered: Any) -> None:
    spec = _operator(rendered)["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}


def test_operator_probes_healthz_on_its_metrics_port(rendered: Any) -> None:
    container = _container(_operator(rendered))
    assert container["args"][0] == "operator"
    metrics_port = int(_flag(container["args"], "--metrics-port") or 0)
    assert _port(container, "metrics") == metrics_port
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"] == "/healthz", probe
        assert _probe_port(container, probe) == metrics_port, probe
    service = rendered.named("Service", f"{rendered.release}-metrics")
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": metrics_port, "targetPort": "metrics", "protocol": "TCP"}
    ]


def test_operator_watches_the_configured_namespaces(rendered: Any) -> None:
    args = _container(_operator(rendered))["args"]
    watched = rendered.values.get("operator", {}).get("watchNamespaces", [])
    assert [_flag([a], "--namespace") for a in args if a.startswith("--namespace=")] == watched
    assert ("--all-namespaces" in args) == (not watched)


def test_operator_gets_store_collector_trainer_and_models(rendered: Any) -> None:
    container = _container(_operator(rendered))
    env = _env(container)
    assert "LIGHTNING_STORE" in env
    assert env["LIGHTNING_COLLECTOR_URL"]["value"] == (
        f"http://{rendered.release}-collector.{rendered.namespace}.svc:8080"
    )
    trainer = rendered.values.get("trainer", {}).get("image", {})
    expected = f"{trainer.get('repository', 'ghcr.io/lightning-op/trainer')}:{trainer.get('tag', '0.1.0')}"
    assert env["LIGHTNING_TRAINER_IMAGE"]["value"] == expected
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in _operator(rendered)["spec"]["template"]["spec"]["volumes"]}
    if _enabled(rendered, "models"):
        assert _flag(container["args"], "--models-dir") == mounts["models"] == "/models"
        claim = volumes["models"]["persistentVolumeClaim"]["claimName"]
        existing = rendered.values.get("models", {}).get("persistence", {}).get("existingClaim")
        if existing:
            assert claim == existing
            assert f"{rendered.release}-models" not in {
                c["metadata"]["name"] for c in rendered.of_kind("PersistentVolumeClaim")
            }
        else:
            spec = rendered.named("PersistentVolumeClaim", claim)["spec"]
            assert spec["accessModes"] == ["ReadWriteMany"]
            assert spec["storageClassName"] == rendered.values["models"]["persistence"]["storageClass"]
    else:
        assert _flag(container["args"], "--models-dir") is None and "models" not in mounts
        # the operator image sets LIGHTNING_MODELS_DIR=/models: emptied, so the operator says it
        # has no models directory instead of writing to a read-only /models
        assert env["LIGHTNING_MODELS_DIR"]["value"] == ""


def test_store_is_sqlite_on_one_claim(rendered: Any) -> None:
    """SQLite is the only store this build has (store.type cosmos fails the render: see
    test_chart_renders_valid_objects)."""
    assert _store_type(rendered) == "sqlite"
    store = rendered.values.get("store", {})
    deployments = [_operator(rendered)]
    if _enabled(rendered, "collector"):
        deployments.append(_collector(rendered))
    for deployment in deployments:
        env = _env(_container(deployment))["LIGHTNING_STORE"]
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert env == {"name": "LIGHTNING_STORE", "value": "sqlite:////data/episodes.db"}
        claim = volumes["store"]["persistentVolumeClaim"]["claimName"]
        existing = store.get("sqlite", {}).get("persistence", {}).get("existingClaim")
        assert claim == (existing or f"{rendered.release}-store")


def test_collector_serves_its_port_and_the_service_targets_it(rendered: Any) -> None:
    if not _enabled(rendered, "collector"):
        names = {o["metadata"]["name"] for o in rendered.objects}
        assert f"{rendered.release}-collector" not in names
        return
    container = _container(_collector(rendered))
    assert container["args"][:2] == ["collector", "--host=0.0.0.0"]
    port = int(_flag(container["args"], "--port") or 0)
    assert _port(container, "http") == port
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert _probe_port(container, "livenessProbe") == _probe_port(container, "readinessProbe") == port
    service = rendered.named("Service", f"{rendered.release}-collector")
    selector = service["spec"]["selector"]
    assert selector.items() <= _collector(rendered)["spec"]["template"]["metadata"]["labels"].items()
    assert not selector.items() <= _operator(rendered)["spec"]["template"]["metadata"]["labels"].items()
    (service_port,) = service["spec"]["ports"]
    target = service_port["targetPort"]
    assert (_port(container, target) if isinstance(target, str) else target) == port
    assert service_port["port"] == 8080  # the port of LIGHTNING_COLLECTOR_URL


def test_collector_with_sqlite_is_one_replica_on_the_operators_node(rendered: Any) -> None:
    if not _enabled(rendered, "collector"):
        return
    spec = _collector(rendered)["spec"]
    affinity = spec["template"]["spec"].get("affinity", {})
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    (term,) = affinity["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    operator_labels = _operator(rendered)["spec"]["template"]["metadata"]["labels"]
    assert term["labelSelector"]["matchLabels"].items() <= operator_labels.items()


def test_collector_token_secret_becomes_a_token_file(render: Any) -> None:
    out = render({"collector": {"token": {"existingSecret": "collector-token", "key": "bearer"}}})
    deployment = _collector(out)
    container = _container(deployment)
    token_file = _flag(container["args"], "--token-file")
    mount = next(m for m in container["volumeMounts"] if m["name"] == "token")
    assert mount["readOnly"] is True and token_file == f"{mount['mountPath']}/token"
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "token")
    assert volume["secret"] == {
        "secretName": "collector-token",
        "items": [{"key": "bearer", "path": "token"}],
    }
    assert "--token-file" not in " ".join(_container(_collector(render({})))["args"])


def test_collector_inflight_budget_reaches_its_args(render: Any) -> None:
    args = _container(_collector(render({"collector": {"maxInflightBytes": 33554432}})))["args"]
    assert _flag(args, "--max-inflight-bytes") == "33554432"
    assert _flag(_container(_collector(render({})))["args"], "--max-inflight-bytes") is None


def _collector_redactor(out: Any) -> redaction.Redactor:
    """The Redactor the collector builds from its rendered args (parsed by its own command)."""
    _, *args = _container(_collector(out))["args"]
    with click.Context(cli.cli) as group_ctx:
        command = cli.cli.get_command(group_ctx, "collector")
        assert command is not None
        params = command.make_context("collector", list(args), parent=group_ctx).params
    return redaction.Redactor(builtins=params["redact_builtins"] or None, patterns=params["redact_patterns"])


def test_collector_redaction_values_reach_what_it_redacts(render: Any) -> None:
    out = render(
        {"collector": {"redaction": {"builtins": ["email", "ip"], "patterns": ["ORD-[0-9]{8}", "a b"]}}}
    )
    redactor = _collector_redactor(out)
    assert set(redactor.builtins) == {"email", "ipv4", "ipv6"} and redactor.patterns == (
        "ORD-[0-9]{8}",
        "a b",
    )
    text = redactor.redact_text("bob@example.com ordered ORD-12345678 from 10.0.0.1, call +1 415 555 0100")
    assert "bob@example.com" not in text and "ORD-12345678" not in text and "10.0.0.1" not in text
    assert "+1 415 555 0100" in text, "phone is not among the chosen detectors"

    everything = _collector_redactor(render({}))
    assert everything.builtins == redaction.Redactor.default().builtins and everything.patterns == ()
    names = [*redaction.BUILTINS, *redaction.ALIASES]  # every name the collector takes, the chart takes
    assert set(
        _collector_redactor(render({"collector": {"redaction": {"builtins": names}}})).builtins
    ) == set(redaction.BUILTINS)


def test_placement_values_reach_the_pods(render: Any) -> None:
    tolerations = [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
    values = {
        "operator": {"nodeSelector": {"pool": "system"}, "tolerations": tolerations},
        "collector": {"nodeSelector": {"pool": "ingest"}, "affinity": {"podAntiAffinity": {}}},
        "imagePullSecrets": [{"name": "ghcr-pull"}],
        "podLabels": {"azure.workload.identity/use": "true"},
    }
    out = render(values)
    operator = _operator(out)["spec"]["template"]
    collector = _collector(out)["spec"]["template"]
    assert operator["spec"]["nodeSelector"] == {"pool": "system"}
    assert operator["spec"]["tolerations"] == tolerations
    assert collector["spec"]["nodeSelector"] == {"pool": "ingest"}
    # a user's affinity is kept beside the SQLite node pinning
    assert set(collector["spec"]["affinity"]) == {"podAntiAffinity", "podAffinity"}
    for pod in (operator, collector):
        assert pod["spec"]["imagePullSecrets"] == [{"name": "ghcr-pull"}]
        assert pod["metadata"]["labels"]["azure.workload.identity/use"] == "true"


@pytest.mark.parametrize(
    "values, expected",
    [
        ({}, "ghcr.io/lightning-op/operator:0.1.0"),
        ({"operator": {"image": {"repository": "acr.example/op", "tag": "1.2.3"}}}, "acr.example/op:1.2.3"),
    ],
    ids=["app-version", "override"],
)
def test_operator_image(render: Any, values: dict[str, Any], expected: str) -> None:
    assert _container(_operator(render(values)))["image"] == expected


def test_notes_tell_the_next_steps(rendered: Any) -> None:
    notes = rendered.notes
    assert f"rollout status deployment/{rendered.release}" in notes
    assert "kubectl get lightning -A" in notes
    if _enabled(rendered, "collector"):
        assert f"http://{rendered.release}-collector.{rendered.namespace}.svc:8080/v1/episodes" in notes


def test_container_args_parse_with_the_cli(rendered: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each container's args are a `lightning-op` command that accepts them (parsed, not run), with
    the container's env in place: options that read an env var (--store from LIGHTNING_STORE) parse
    the value the chart sets."""
    for name, pod in rendered.pod_templates():
        for container in pod["spec"]["containers"]:
            for var in container.get("env", []):
                if "value" in var:
                    monkeypatch.setenv(var["name"], str(var["value"]))
            command, *args = container["args"]
            with click.Context(cli.cli) as group_ctx:
                resolved = cli.cli.get_command(group_ctx, command)
                assert resolved is not None, f"{name}: no lightning-op command {command!r}"
                try:
                    resolved.make_context(command, list(args), parent=group_ctx)
                except click.ClickException as exc:
                    pytest.fail(
                        f"{name}: `lightning-op {' '.join(container['args'])}`: {exc.format_message()}"
                    )


@pytest.mark.parametrize("keep", [True, False], ids=["keep", "delete-with-release"])
def test_claims_outlive_the_release_by_default(render: Any, keep: bool) -> None:
    persistence = {"persistence": {"keep": keep}}
    out = render({"store": {"sqlite": persistence}, "models": persistence})
    claims = out.of_kind("PersistentVolumeClaim")
    assert {c["metadata"]["name"] for c in claims} == {f"{out.release}-store", f"{out.release}-models"}
    for claim in claims:
        annotations = claim["metadata"].get("annotations", {})
        assert (annotations.get("helm.sh/resource-policy") == "keep") == keep
        assert (annotations.get("argocd.argoproj.io/sync-options") == "Delete=false") == keep
    assert (
        render({}).of_kind("PersistentVolumeClaim")[0]["metadata"]["annotations"]["helm.sh/resource-policy"]
        == "keep"
    )


def test_env_the_chart_sets_is_read_by_the_code(rendered: Any, repo_root: Path) -> None:
    """Every env var the templates set (the values' extraEnv aside) is a name the code reads."""
    source = "\n".join(p.read_text(encoding="utf-8") for p in (repo_root / "src").rglob("*.py"))
    values = rendered.values
    extra = {
        e["name"]
        for section in ("operator", "collector")
        for e in values.get(section, {}).get("extraEnv", [])
    }
    for name, pod in rendered.pod_templates():
        for container in pod["spec"]["containers"]:
            for var in container.get("env", []):
                if var["name"] not in extra:
                    assert f'"{var["name"]}"' in source, f"{name}: {var['name']} is read nowhere in src/"


def test_a_users_pod_affinity_is_kept_beside_the_sqlite_pinning(render: Any) -> None:
    """With store.type sqlite the chart adds a required podAffinity term (the operator's node) to
    the collector's: the user's own podAffinity terms, preferred and required, stay."""
    mine = {"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "topology.kubernetes.io/zone"}
    preferred = [{"weight": 50, "podAffinityTerm": mine}]
    values = {
        "collector": {
            "affinity": {
                "podAffinity": {
                    "preferredDuringSchedulingIgnoredDuringExecution": preferred,
                    "requiredDuringSchedulingIgnoredDuringExecution": [mine],
                }
            }
        }
    }
    pod_affinity = _collector(render(values))["spec"]["template"]["spec"]["affinity"]["podAffinity"]
    assert pod_affinity["preferredDuringSchedulingIgnoredDuringExecution"] == preferred
    required = pod_affinity["requiredDuringSchedulingIgnoredDuringExecution"]
    assert required[0] == mine and len(required) == 2
    assert required[1]["topologyKey"] == "kubernetes.io/hostname"
