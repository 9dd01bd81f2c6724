"""Reconciling an unchanged EpisodeCapture makes no write calls.

Covers: once an Active capture and a Disabled one (each on its own Deployment) are settled and their
figures current, the running operator's timer ticks (which read the store and find the same figures)
write nothing; a restarted operator then runs the resume handler on both (reads the Deployment, finds
the env already right) and several timer ticks, and sends no write at all: no Deployment patch, no
status patch, no Event, and no kopf bookkeeping patch (the resume handler succeeds at once, so kopf
has no progress to record, and the last-handled configuration is unchanged).
"""

from __future__ import annotations

import asyncio

from lightning_op.api import constants


def capture(name: str, target: str, enabled: bool) -> dict:
    return {
        "apiVersion": constants.API_VERSION,
        "kind": "EpisodeCapture",
        "metadata": {"name": name},
        "spec": {"targetRef": {"name": target}, "enabled": enabled},
    }


def _count(metrics: str, handler: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("lightning_op_reconciles_total{") and f'handler="{handler}"' in line
    )


async def test_restart_against_settled_captures_writes_nothing(api, operator, objects):
    for name, enabled in (("on", True), ("off", False)):
        await api.create(objects.agent_deployment(f"agent-{name}"))
        await api.create(capture(name, f"agent-{name}", enabled))
    await api.wait_for_phase("EpisodeCapture", "on", "Active")
    await api.wait_for_phase("EpisodeCapture", "off", "Disabled")

    async def settled() -> bool:
        for name in ("on", "off"):
            obj = await api.get("EpisodeCapture", name)
            annotations = obj["metadata"].get("annotations") or {}
            if "episodesCaptured" not in obj["status"] or not any(
                key.endswith("/last-handled-configuration") for key in annotations
            ):
                return False
        return True

    await api.wait_for(settled, what="figures and kopf's last-handled configuration on both")
    assert "ENABLE_EPISODE_CAPTURE" not in objects.env_dict(await api.get("Deployment", "agent-off"))
    await asyncio.sleep(0.6)  # anything still in flight (a timer tick) lands before the mark

    mark = api.mark()
    await asyncio.sleep(1.1)  # the running operator: two timer ticks per object
    assert [str(w) for w in api.writes_since(mark)] == []

    await operator.restart()

    async def handled_again() -> bool:
        metrics = await operator.metrics()
        return _count(metrics, "reconcile_capture") >= 2 and _count(metrics, "sync_capture_figures") >= 6

    await api.wait_for(handled_again, timeout=15, what="both resume handlers and three ticks per object")
    assert [str(w) for w in api.writes_since(mark)] == []
