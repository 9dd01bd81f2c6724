"""Operator restarts at many points of a FineTuneJob's life: exactly one trainer Job per round, and the
job still finishes.

Covers: a crash (SIGKILL) right after the object is created, while the baseline runs, while a round's
Job finishes with the operator down, right after a round's Job appeared (before its status may have
been written), and a graceful restart (SIGTERM) mid-round; then a soak where a background trainer
completes every round a second after its Job appears while the operator is killed at seeded random moments.
Each time: the Jobs are exactly ``r0..rN``, none was ever deleted and created again (each keeps the
uid first seen), and the dataset snapshot was built once (its sha256 never changes).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from pathlib import Path
from typing import Any

import pytest
from support.trainer_double import TrainerDouble, finetune_manifest, seed_episodes

pytestmark = pytest.mark.timeout(150)


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    path = tmp_path / "models"
    path.mkdir()
    return path


@pytest.fixture
def trainer(api: Any, kubelet: Any, models_dir: Path) -> TrainerDouble:
    return TrainerDouble(api, kubelet, models_dir)


class JobWatch:
    """Records the uid each trainer Job had when first seen."""

    def __init__(self, api: Any) -> None:
        self.api = api
        self.uids: dict[str, str] = {}

    async def check(self) -> list[str]:
        jobs = await self.api.list("Job")
        for job in jobs:
            name, uid = job["metadata"]["name"], job["metadata"]["uid"]
            assert self.uids.setdefault(name, uid) == uid, f"Job {name} was deleted and created again"
        return sorted(self.uids)

    async def wait(self, name: str) -> None:
        async def seen() -> bool:
            return name in await self.check()

        await self.api.wait_for(seen, timeout=15, what=f"Job {name}")


async def test_restart_at_each_step_keeps_one_job_per_round(
    api: Any, operator_process: Any, trainer: TrainerDouble, models_dir: Path, store_url: str
) -> None:
    seed_episodes(store_url, "bot", 12)
    env = {"LIGHTNING_MODELS_DIR": str(models_dir)}
    jobs = JobWatch(api)
    await operator_process.start(**env)

    await api.create(finetune_manifest("ftj"))
    await operator_process.kill()  # crash right after creation
    await operator_process.start(**env)
    obj = await api.wait_for_phase("FineTuneJob", "ftj", "Evaluating")
    sha = obj["status"]["dataset"]["sha256"]
    await jobs.wait("ftj-r0")

    await operator_process.kill()  # crash while the baseline runs; it finishes meanwhile
    await trainer.succeed("ftj", 0, 0.4)
    await operator_process.start(**env)
    await jobs.wait("ftj-r1")

    await operator_process.restart(**env)  # graceful restart mid-round
    await trainer.progress("ftj", 1, 30.0)

    async def progressed() -> bool:
        status = ((await api.get("FineTuneJob", "ftj")) or {}).get("status") or {}
        return (status.get("progress") or {}).get("percent") == 30

    await api.wait_for(progressed, what="progress after a restart")

    await operator_process.kill()  # round 1 finishes while the operator is down
    await trainer.succeed("ftj", 1, 0.6)
    await operator_process.start(**env)
    await jobs.wait("ftj-r2")
    await operator_process.kill()  # crash right after round 2's Job appeared
    await operator_process.start(**env)
    await asyncio.sleep(0.5)
    await trainer.succeed("ftj", 2, 0.9)

    obj = await api.wait_for_phase("FineTuneJob", "ftj", "Succeeded", timeout=15)
    assert obj["status"]["dataset"]["sha256"] == sha
    assert [r["round"] for r in obj["status"]["rounds"]] == [1, 2]
    assert await jobs.check() == ["ftj-r0", "ftj-r1", "ftj-r2"]
    assert operator_process.starts == 6


async def _auto_trainer(trainer: TrainerDouble, api: Any, scores: dict[int, float]) -> None:
    """Completes each round's Job a second after it appears, like a very fast trainer."""
    done: set[str] = set()
    while True:
        for job in await api.list("Job"):
            name = job["metadata"]["name"]
            if name in done:
                continue
            number = int(name.rsplit("-r", 1)[1])
            await asyncio.sleep(1.0)
            await trainer.succeed("soak", number, scores[number])
            done.add(name)
        await asyncio.sleep(0.1)


async def test_random_crashes_while_a_trainer_completes_rounds(
    api: Any, operator_process: Any, trainer: TrainerDouble, models_dir: Path, store_url: str
) -> None:
    seed_episodes(store_url, "bot", 12)
    env = {"LIGHTNING_MODELS_DIR": str(models_dir)}
    jobs = JobWatch(api)
    rng = random.Random(5)
    await operator_process.start(**env)
    await api.create(finetune_manifest("soak"))
    runner = asyncio.create_task(_auto_trainer(trainer, api, {0: 0.2, 1: 0.5, 2: 0.7, 3: 0.8}))
    crashes = 0
    try:
        for _ in range(40):
            await asyncio.sleep(rng.uniform(0.05, 0.8))
            await jobs.check()
            obj = await api.get("FineTuneJob", "soak")
            if obj and (obj.get("status") or {}).get("phase") == "Succeeded":
                break
            await operator_process.kill()
            crashes += 1
            await operator_process.start(**env)
        obj = await api.wait_for_phase("FineTuneJob", "soak", "Succeeded", timeout=20)
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
    assert crashes >= 3
    assert await jobs.check() == ["soak-r0", "soak-r1", "soak-r2", "soak-r3"]
    assert [r["round"] for r in obj["status"]["rounds"]] == [1, 2, 3]
    assert obj["status"]["rounds"][2]["score"] == 0.8
