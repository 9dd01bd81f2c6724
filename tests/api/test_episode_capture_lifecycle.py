"""EpisodeCapture from creation to deletion, as a user sees it (the real operator against the emulator).

Covers: creation patches exactly the capture variables (``spec.redaction`` included, as
``EPISODE_REDACT_BUILTINS`` and ``EPISODE_REDACT_PATTERNS``) onto the named container (the
container's other env, a ``valueFrom`` entry included, and the sidecar are untouched) and reaches
phase Active with Ready and CaptureEnabled conditions, a ``New -> Active`` Event and the object in
``lightning_op_objects{phase="Active"}``; ``episodesCaptured`` and ``lastEpisodeTime`` follow the store
on the timer, after ``retention.ttlDays`` purged the agent's older episodes; moving ``targetRef`` to
another Deployment removes the variables from the first and sets them on the second; a change of
``redaction.patterns`` reaches the agent's env; ``enabled:
false`` removes exactly those variables (phase Disabled, Event), re-enabling sets them again; deleting
the object removes them and the finalizer lets the object go. A missing Deployment is phase Pending
with a TargetNotFound condition and recovers once the Deployment appears, with retries spaced by the
retry delay (no storm). With no container in the spec, the env follows the container that has it
(``status.container``) when a sidecar is put first: disable, enable and delete leave the sidecar alone.
"""

from __future__ import annotations

import asyncio
import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from support.printer import printed

from lightning_op.api import constants
from lightning_op.api import episode as ep

CAPTURE = {
    "apiVersion": constants.API_VERSION,
    "kind": "EpisodeCapture",
    "metadata": {"name": "support-bot"},
    "spec": {
        "targetRef": {"kind": "Deployment", "name": "agent", "container": "agent"},
        "samplingRate": 0.25,
        "redaction": {"builtins": ["email", "phone"], "patterns": ["ORD-[0-9]{8}"]},
        "retention": {"ttlDays": 30},
    },
}
CAPTURE_VARS = {
    "ENABLE_EPISODE_CAPTURE": "true",
    "EPISODE_COLLECTOR_URL": "http://collector.lightning-op.svc:8080",
    "EPISODE_AGENT_ID": "support-bot",
    "EPISODE_SAMPLING_RATE": "0.25",
    "EPISODE_REDACT_BUILTINS": "email,phone",
    "EPISODE_REDACT_PATTERNS": '["ORD-[0-9]{8}"]',
}
BASE = (datetime.now(UTC) - timedelta(days=1)).replace(second=0, microsecond=0)


def episodes(n: int, start: int = 0, agent: str = "support-bot", base: datetime = BASE) -> list[ep.Episode]:
    return [
        ep.Episode(
            id=f"e-{agent}-{base:%Y%m%d}-{i}",
            agent_id=agent,
            timestamp=base + timedelta(minutes=i),
            state=ep.State(query=f"question {i}"),
            result="ok",
        )
        for i in range(start, start + n)
    ]


def conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in obj["status"].get("conditions", [])}


async def test_capture_from_creation_to_deletion(api, operator, objects, store):
    deployment = await api.create(objects.agent_deployment())
    original_agent_env = objects.container_env(deployment, "agent")
    original_proxy_env = objects.container_env(deployment, "proxy")
    store.insert_many(episodes(3) + episodes(2, base=BASE - timedelta(days=40)))  # two past retention

    await api.create(CAPTURE)
    obj = await api.wait_for_phase("EpisodeCapture", "support-bot", "Active")
    deployment = await api.get("Deployment", "agent")
    assert objects.container_env(deployment, "agent") == original_agent_env + [
        {"name": name, "value": value} for name, value in CAPTURE_VARS.items()
    ]
    assert objects.container_env(deployment, "proxy") == original_proxy_env
    env_patches = [w for w in api.writes_since(0, "deployments") if w.method == "PATCH" and not w.subresource]
    assert env_patches and {w.field_manager for w in env_patches} == {"lightning-op"}, (
        "the env is set under the field manager lightning-op (Argo CD's managedFieldsManagers relies on it)"
    )
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    assert obj["status"]["container"] == "agent"
    assert conditions(obj)["Ready"]["status"] == "True"
    assert conditions(obj)["CaptureEnabled"]["reason"] == "CaptureEnabled"
    assert constants.FINALIZER in obj["metadata"]["finalizers"]
    assert 'lightning_op_objects{kind="EpisodeCapture",phase="Active"} 1.0' in await operator.metrics()

    async def figures() -> dict[str, Any] | None:
        status = ((await api.get("EpisodeCapture", "support-bot")) or {}).get("status", {})
        return status if status.get("episodesCaptured") == 3 else None

    status = await api.wait_for(figures, what="episodesCaptured == 3")
    row = printed(await api.get("EpisodeCapture", "support-bot") or {})
    assert {k: v for k, v in row.items() if k != "Age"} == {
        "Phase": "Active",
        "Captured": 3,
        "Last Episode": status["lastEpisodeTime"],
        "Target": "agent",
        "Sampling": 0.25,
        "Reason": conditions(obj)["Ready"]["reason"],
    }, "what kubectl get ec -o wide shows"
    assert status["lastEpisodeTime"] == (BASE + timedelta(minutes=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert store.count(agent_id="support-bot") == 3  # the two older than ttlDays were purged
    store.insert_many(episodes(2, start=3) + episodes(4, agent="other-bot"))
    await api.wait_for(lambda: _captured(api, 5), what="episodesCaptured == 5")

    await api.create(objects.agent_deployment("agent-2"))
    await api.patch("EpisodeCapture", "support-bot", {"spec": {"targetRef": {"name": "agent-2"}}})

    async def moved() -> bool:
        return (
            objects.env_dict(await api.get("Deployment", "agent-2")).get("EPISODE_AGENT_ID") == "support-bot"
        )

    await api.wait_for(moved, what="capture env on agent-2")
    assert objects.container_env(await api.get("Deployment", "agent"), "agent") == original_agent_env
    assert objects.container_env(await api.get("Deployment", "agent-2"), "agent") == original_agent_env + [
        {"name": name, "value": value} for name, value in CAPTURE_VARS.items()
    ]

    patterns = ["ORD-[0-9]{8}", r"CUST-\d{4,6}"]
    await api.patch("EpisodeCapture", "support-bot", {"spec": {"redaction": {"patterns": patterns}}})

    async def repatterned() -> bool:
        env = objects.env_dict(await api.get("Deployment", "agent-2"))
        return env.get("EPISODE_REDACT_PATTERNS") == json.dumps(patterns, separators=(",", ":"))

    await api.wait_for(repatterned, what="the new redaction patterns on agent-2")
    assert (
        objects.env_dict(await api.get("Deployment", "agent-2"))["EPISODE_REDACT_BUILTINS"] == "email,phone"
    )

    await api.patch("EpisodeCapture", "support-bot", {"spec": {"enabled": False}})
    obj = await api.wait_for_phase("EpisodeCapture", "support-bot", "Disabled")
    assert objects.container_env(await api.get("Deployment", "agent-2"), "agent") == original_agent_env
    assert conditions(obj)["CaptureEnabled"]["status"] == "False"

    await api.patch("EpisodeCapture", "support-bot", {"spec": {"enabled": True}})
    await api.wait_for_phase("EpisodeCapture", "support-bot", "Active")
    assert objects.env_dict(await api.get("Deployment", "agent-2"))["ENABLE_EPISODE_CAPTURE"] == "true"

    await api.delete("EpisodeCapture", "support-bot")

    async def gone() -> bool:
        return await api.get("EpisodeCapture", "support-bot") is None

    await api.wait_for(gone, what="the EpisodeCapture to be deleted")
    for name in ("agent", "agent-2"):
        deployment = await api.get("Deployment", name)
        assert objects.container_env(deployment, "agent") == original_agent_env
        assert objects.container_env(deployment, "proxy") == original_proxy_env

    events = [(e["type"], e["reason"], e["message"]) for e in await api.events("support-bot")]
    assert [m.split(":")[0] for _, _, m in events] == [
        "New -> Active",
        "Active -> Disabled",
        "Disabled -> Active",
    ], events
    assert all(t == "Normal" for t, _, _ in events)


async def _captured(api: Any, n: int) -> bool:
    obj = await api.get("EpisodeCapture", "support-bot")
    return bool(obj and obj.get("status", {}).get("episodesCaptured") == n)


async def test_missing_deployment_is_pending_then_recovers_without_a_retry_storm(api, operator, objects):
    await api.create(CAPTURE)
    obj = await api.wait_for_phase("EpisodeCapture", "support-bot", "Pending")
    assert conditions(obj)["CaptureEnabled"]["reason"] == "TargetNotFound"
    assert "Deployment test/agent not found" in conditions(obj)["CaptureEnabled"]["message"]
    mark = api.mark()
    gets_before = _deployment_gets(api)
    await asyncio.sleep(2.5)
    # The retry delay is 1 s in tests (30 s by default): a couple of retries, not hundreds. Each retry
    # costs one GET of the Deployment and two kopf bookkeeping patches (its retry counter and the
    # self-wake annotation); the Pending status is not rewritten (the timer writes its figures once).
    assert _deployment_gets(api) - gets_before <= 4
    writes = api.writes_since(mark, "episodecaptures")
    assert len([w for w in writes if w.kopf_bookkeeping]) <= 8, [str(w) for w in writes]
    assert [w.data for w in writes if not w.kopf_bookkeeping] in ([], [{"status": {"episodesCaptured": 0}}])

    await api.create(objects.agent_deployment())
    await api.wait_for_phase("EpisodeCapture", "support-bot", "Active", timeout=10)
    assert objects.env_dict(await api.get("Deployment", "agent"))["EPISODE_AGENT_ID"] == "support-bot"
    events = [e["message"].split(":")[0] for e in await api.events("support-bot")]
    assert events == ["New -> Pending", "Pending -> Active"]


def _deployment_gets(api: Any) -> int:
    return sum(
        1
        for r in api.emulator.history
        if r.method == "GET" and r.resource is not None and r.resource.plural == "deployments" and r.name
    )


async def test_the_capture_env_follows_its_container_when_a_sidecar_is_put_first(api, operator, objects):
    """No container in the spec: the env goes to the first container (agent) and status.container
    records it. A new release puts a sidecar first; disabling (and re-enabling, and deleting) acts on
    the container that has the env, never on the sidecar that is first now."""
    await api.create(objects.agent_deployment())
    capture = copy.deepcopy(CAPTURE)
    del capture["spec"]["targetRef"]["container"]
    await api.create(capture)
    obj = await api.wait_for_phase("EpisodeCapture", "support-bot", "Active")
    assert obj["status"]["container"] == "agent"

    sidecar = {"name": "otel", "image": "registry.example/otel:1", "env": [{"name": "OTEL", "value": "1"}]}
    await api.patch(
        "Deployment", "agent", [{"op": "add", "path": "/spec/template/spec/containers/0", "value": sidecar}]
    )

    def capture_vars(deployment, container):
        return [e["name"] for e in objects.container_env(deployment, container) if e["name"] in CAPTURE_VARS]

    await api.patch("EpisodeCapture", "support-bot", {"spec": {"enabled": False}})
    await api.wait_for_phase("EpisodeCapture", "support-bot", "Disabled")
    deployment = await api.get("Deployment", "agent")
    assert capture_vars(deployment, "agent") == [] and capture_vars(deployment, "otel") == []

    await api.patch("EpisodeCapture", "support-bot", {"spec": {"enabled": True}})
    obj = await api.wait_for_phase("EpisodeCapture", "support-bot", "Active")
    deployment = await api.get("Deployment", "agent")
    assert obj["status"]["container"] == "agent"
    assert capture_vars(deployment, "agent") and capture_vars(deployment, "otel") == []

    await api.delete("EpisodeCapture", "support-bot")

    async def gone():
        return await api.get("EpisodeCapture", "support-bot") is None

    await api.wait_for(gone, what="the EpisodeCapture to be deleted")
    deployment = await api.get("Deployment", "agent")
    assert capture_vars(deployment, "agent") == [] and capture_vars(deployment, "otel") == []
    assert objects.container_env(deployment, "otel") == sidecar["env"]
