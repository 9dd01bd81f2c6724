"""Reconciling an unchanged EpisodeCapture makes no write calls.

Covers: once an EpisodeCapture is Active and its figures are current, a restarted operator runs the
resume handler (reads the Deployment, finds the env already right) and several timer ticks (reads
the store, finds the same figures), and sends no write at all: no Deployment patch, no status patch,
no Event, and no kopf bookkeeping patch (the resume handler succeeds at once, so kopf has no progress
to record, and the last-handled configuration is unchanged). The same holds while the first operator
keeps running. A Disabled capture is equally quiet.
"""

from __future__ import annotations

import asyncio
import re

from lightning_op.api import constants

CAPTURE = {
    "apiVersion": constants.API_VERSION,
    "kind": "EpisodeCapture",
    "metadata": {"name": "support-bot"},
    "spec": {"targetRef": {"name": "agent"}},
}


def _count(metrics: str, handler: str) -> float:
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith("lightning_op_reconciles_total{") and f'handler="{handler}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


async def _settle(api, name: str, phase: str) -> None:
    await api.wait_for_phase("EpisodeCapture", name, phase)

    async def figures() -> bool:
        obj = await api.get("EpisodeCapture", name)
        return "episodesCaptured" in obj["status"] and re.search(
            "last-handled-configuration", str(obj["metadata"].get("annotations"))
        ) is not None

    await api.wait_for(figures, what="figures and kopf's last-handled configuration")
    await asyncio.sleep(0.7)  # anything still in flight (a timer tick) lands before the mark


async def _handled_again(api, operator) -> None:
    async def ran() -> bool:
        metrics = await operator.metrics()
        return _count(metrics, "reconcile_capture") >= 1 and _count(metrics, "sync_capture_figures") >= 3

    await api.wait_for(ran, timeout=15, what="the resume handler and three timer ticks")


async def test_restart_against_a_steady_active_capture_writes_nothing(api, operator, objects):
    await api.create(objects.agent_deployment())
    await api.create(CAPTURE)
    await _settle(api, "support-bot", "Active")

    mark = api.mark()
    await asyncio.sleep(1.2)  # the running operator: timer ticks only
    assert api.writes_since(mark) == []

    await operator.restart()
    await _handled_again(api, operator)
    assert [str(w) for w in api.writes_since(mark)] == []


async def test_restart_against_a_disabled_capture_writes_nothing(api, operator, objects):
    await api.create(objects.agent_deployment())
    await api.create({**CAPTURE, "spec": {**CAPTURE["spec"], "enabled": False}})
    await _settle(api, "support-bot", "Disabled")
    assert "ENABLE_EPISODE_CAPTURE" not in objects.env_dict(await api.get("Deployment", "agent"))

    mark = api.mark()
    await operator.restart()
    await _handled_again(api, operator)
    assert [str(w) for w in api.writes_since(mark)] == []
