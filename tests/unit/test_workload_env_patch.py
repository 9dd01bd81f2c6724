"""Setting and restoring env vars on one container of a Deployment with JSON patches.

Covers: only the named vars change (other env and other containers untouched), an unchanged
workload yields no patch (no write), a snapshot restores the exact previous env (values, valueFrom,
absence), a container with no env list, an unknown container names the ones that exist, a
concurrent reorder makes the patch's ``test`` ops fail instead of editing the wrong entry, and any
write since the Deployment was read (its resourceVersion moved) makes the patch fail, so env another
writer just added is neither replaced nor duplicated. EpisodeCapture's env patch carries
``spec.redaction`` (builtins comma-separated, patterns as a JSON array, a comma inside a regex
included) that the capture client turns back into the same redactor, sets an empty builtins list as
empty, and its removal takes the redaction variables away with the others.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch
import pytest

from lightning_op.api import capture
from lightning_op.collector import capture as capture_client
from lightning_op.manifests import workload_env
from lightning_op.pipeline import capture_sync
from lightning_op.store import redaction


def deployment(env_app: list[dict[str, Any]] | None) -> dict[str, Any]:
    app: dict[str, Any] = {"name": "agent", "image": "agent:1"}
    if env_app is not None:
        app["env"] = env_app
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "agent", "namespace": "demo", "resourceVersion": "41"},
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "sidecar",
                            "image": "proxy:1",
                            "env": [{"name": "MODEL_NAME", "value": "x"}],
                        },
                        app,
                    ]
                }
            }
        },
    }


BASE_ENV = [
    {"name": "MODEL_NAME", "value": "gpt-small"},
    {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
    {"name": "USE_TUNED_MODEL", "value": "false"},
]


def apply(body: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = jsonpatch.apply_patch(copy.deepcopy(body), ops)
    return result


def app_env(body: dict[str, Any]) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = body["spec"]["template"]["spec"]["containers"][1].get("env", [])
    return env


@pytest.mark.parametrize(
    "initial_env",
    [
        pytest.param(copy.deepcopy(BASE_ENV), id="existing-env"),
        pytest.param(None, id="no-env-list"),
        pytest.param([], id="empty-env"),
    ],
)
def test_set_then_restore_gives_back_the_exact_env(initial_env: list[dict[str, Any]] | None) -> None:
    before = deployment(initial_env)
    names = ["USE_TUNED_MODEL", "TUNED_MODEL_NAME"]
    snapshot = workload_env.snapshot_env(before, "agent", names)
    promoted = apply(
        before,
        workload_env.env_patch(
            before, "agent", {"USE_TUNED_MODEL": "true", "TUNED_MODEL_NAME": "agent-ft-1"}
        ),
    )
    env = {e["name"]: e.get("value") for e in app_env(promoted)}
    assert env["USE_TUNED_MODEL"] == "true" and env["TUNED_MODEL_NAME"] == "agent-ft-1"
    # the sidecar and unrelated variables are untouched
    assert (
        promoted["spec"]["template"]["spec"]["containers"][0]
        == before["spec"]["template"]["spec"]["containers"][0]
    )
    for entry in initial_env or []:
        if entry["name"] not in names:
            assert entry in app_env(promoted)

    restored = apply(promoted, workload_env.restore_patch(promoted, "agent", snapshot))
    assert app_env(restored) == (initial_env or [])


def test_unchanged_workload_needs_no_patch() -> None:
    body = deployment(copy.deepcopy(BASE_ENV))
    assert workload_env.env_patch(body, "agent", {"MODEL_NAME": "gpt-small", "ABSENT": None}) == []


def test_an_empty_value_as_the_api_server_returns_it_needs_no_patch() -> None:
    """The API server leaves an empty ``value`` out of what it stores and returns: a var set to ""
    reads back as ``{"name": ...}`` alone, which is the same var, not a change to write again on
    every reconcile."""
    body = deployment([*copy.deepcopy(BASE_ENV), {"name": "EPISODE_REDACT_BUILTINS"}])
    assert workload_env.env_patch(body, "agent", {"EPISODE_REDACT_BUILTINS": ""}) == []
    kept = deployment([*copy.deepcopy(BASE_ENV), {"name": "EPISODE_REDACT_BUILTINS", "value": ""}])
    assert workload_env.env_patch(kept, "agent", {"EPISODE_REDACT_BUILTINS": ""}) == []
    added = apply(
        deployment(copy.deepcopy(BASE_ENV)),
        workload_env.env_patch(deployment(copy.deepcopy(BASE_ENV)), "agent", {"EPISODE_REDACT_BUILTINS": ""}),
    )
    assert app_env(added)[-1] == {"name": "EPISODE_REDACT_BUILTINS"}


def test_removal_of_several_vars_keeps_the_rest_in_order() -> None:
    body = deployment(copy.deepcopy(BASE_ENV))
    ops = workload_env.env_patch(body, "agent", {"MODEL_NAME": None, "USE_TUNED_MODEL": None})
    assert [e["name"] for e in app_env(apply(body, ops))] == ["SECRET"]


def test_unknown_container_names_the_existing_ones() -> None:
    with pytest.raises(workload_env.ContainerNotFoundError, match="sidecar, agent"):
        workload_env.env_patch(deployment([]), "web", {"A": "1"})


def test_a_concurrent_reorder_makes_the_patch_fail_instead_of_editing_the_wrong_entry() -> None:
    body = deployment(copy.deepcopy(BASE_ENV))
    ops = workload_env.env_patch(body, "agent", {"USE_TUNED_MODEL": "true"})
    reordered = copy.deepcopy(body)
    app_env(reordered).reverse()
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        apply(reordered, ops)


@pytest.mark.parametrize(
    ("initial_env", "added_meanwhile"),
    [
        pytest.param(None, {"name": "OTHER", "value": "kept"}, id="env-list-created-meanwhile"),
        pytest.param([], {"name": "USE_TUNED_MODEL", "value": "false"}, id="same-name-added-meanwhile"),
    ],
)
def test_a_write_since_the_read_makes_the_patch_fail_instead_of_losing_or_duplicating_env(
    initial_env: list[dict[str, Any]] | None, added_meanwhile: dict[str, Any]
) -> None:
    body = deployment(initial_env)
    ops = workload_env.env_patch(body, "agent", {"USE_TUNED_MODEL": "true"})
    edited = copy.deepcopy(body)
    edited["spec"]["template"]["spec"]["containers"][1]["env"] = [added_meanwhile]
    edited["metadata"]["resourceVersion"] = "42"
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        apply(edited, ops)
    # built again from the re-read body, the patch keeps the other writer's entry and adds no twin
    env = app_env(apply(edited, workload_env.env_patch(edited, "agent", {"USE_TUNED_MODEL": "true"})))
    names = [e["name"] for e in env]
    assert names.count("USE_TUNED_MODEL") == 1 and {"name": "USE_TUNED_MODEL", "value": "true"} in env
    assert added_meanwhile["name"] == "USE_TUNED_MODEL" or added_meanwhile in env


def capture_spec(spec_redaction: dict[str, Any]) -> capture.EpisodeCaptureSpec:
    body = {
        "metadata": {"name": "shop"},
        "spec": {"targetRef": {"name": "agent"}, "redaction": spec_redaction},
    }
    return capture.parse_spec(body)


@pytest.mark.parametrize(
    ("spec_redaction", "builtins_env", "patterns"),
    [
        pytest.param(
            {"builtins": ["email", "ip"], "patterns": ["ORD-[0-9]{8}", r"CUST-\d{2,4}"]},
            "email,ip",
            ["ORD-[0-9]{8}", r"CUST-\d{2,4}"],
            id="builtins-and-patterns",
        ),
        pytest.param({"builtins": [], "patterns": ["ORD-[0-9]{8}"]}, "", ["ORD-[0-9]{8}"], id="no-builtins"),
        pytest.param({}, "bearer,api_key,email,credit_card,ip,phone", [], id="defaults"),
    ],
)
def test_capture_env_patch_carries_the_redaction_and_its_removal_takes_it_away(
    spec_redaction: dict[str, Any], builtins_env: str, patterns: list[str]
) -> None:
    before = deployment(copy.deepcopy(BASE_ENV))
    spec = capture_spec(spec_redaction)
    enabled = apply(
        before, workload_env.env_patch(before, "agent", capture_sync.capture_env(spec, "http://c:8080"))
    )
    # a var with no value (an empty one, as the API server stores it) is set to "" in the pod
    env = {e["name"]: e.get("value", "") for e in app_env(enabled) if "valueFrom" not in e}

    assert env["EPISODE_REDACT_BUILTINS"] == builtins_env
    assert json.loads(env["EPISODE_REDACT_PATTERNS"]) == patterns
    redactor = capture_client.redactor_from_env(env)
    assert redactor is not None and list(redactor.patterns) == patterns
    expected = redaction.Redactor(builtins=[str(b) for b in spec.redaction.builtins])
    assert redactor.builtins == expected.builtins

    disabled = capture_spec(spec_redaction).model_copy(update={"enabled": False})
    for desired in (capture_sync.capture_env(disabled, "http://c:8080"), capture_sync.removal_env()):
        assert app_env(apply(enabled, workload_env.env_patch(enabled, "agent", desired))) == BASE_ENV


@pytest.mark.parametrize("rate", [0.9999999, 0.3333333333, 0.25, 1.0, 0.0])
def test_the_sampling_rate_reaches_the_capture_client_exactly(rate: float) -> None:
    """EPISODE_SAMPLING_RATE carries every digit of spec.samplingRate: six significant digits made
    0.9999999 into 1 (everything captured)."""
    body = {"metadata": {"name": "shop"}, "spec": {"targetRef": {"name": "agent"}, "samplingRate": rate}}
    env = capture_sync.capture_env(capture.parse_spec(body), "http://c:8080")
    recorder = capture_client.EpisodeRecorder.from_env({k: v for k, v in env.items() if v is not None})
    assert recorder.sampling_rate == rate
