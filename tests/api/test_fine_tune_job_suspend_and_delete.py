"""``spec.suspend`` and deletion of a FineTuneJob.

Covers: created suspended, it starts no Job and says why (phase Suspended, condition Suspended);
unsuspended, it runs; suspended mid-round, the round's Job is suspended (``Job.spec.suspend``, its pod
stops and the trainer checkpoints) rather than deleted, and resuming resumes that same Job (same uid)
and the job still finishes; deleting a FineTuneJob deletes its trainer Jobs (the finalizer; the
emulator has no garbage collector) and the object goes away; a round's Job deleted by hand mid-round
(the trainer's last word "Terminated", resumable) is created again and the job still finishes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support.trainer_double import TrainerDouble, finetune_manifest, seed_episodes

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    return tmp_path / "models"


@pytest.fixture
async def ftj_operator(operator_process: Any, models_dir: Path, store_url: str) -> Any:
    seed_episodes(store_url, "bot", 12)
    return await operator_process.start(LIGHTNING_MODELS_DIR=str(models_dir))


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == type_)


async def test_suspend_and_resume(api: Any, ftj_operator: Any, kubelet: Any, models_dir: Path) -> None:
    trainer = TrainerDouble(api, kubelet, models_dir)
    await api.create(finetune_manifest("held", suspend=True))
    obj = await api.wait_for_phase("FineTuneJob", "held", "Suspended")
    assert _condition(obj, "Suspended")["status"] == "True"
    assert "spec.suspend is true" in _condition(obj, "Suspended")["message"]
    assert await api.list("Job") == []

    await api.patch("FineTuneJob", "held", {"spec": {"suspend": False}})
    await api.wait_for_phase("FineTuneJob", "held", "Evaluating")
    await trainer.succeed("held", 0, 0.3)
    await api.wait_for_phase("FineTuneJob", "held", "Training")
    job = await api.wait_for(lambda: api.get("Job", "held-r1"), what="round 1 Job")
    await trainer.progress("held", 1, 20.0)

    await api.patch("FineTuneJob", "held", {"spec": {"suspend": True}})
    obj = await api.wait_for_phase("FineTuneJob", "held", "Suspended")

    async def job_suspended() -> bool:
        return bool(((await api.get("Job", "held-r1")) or {}).get("spec", {}).get("suspend"))

    await api.wait_for(job_suspended, what="round 1 Job suspended")
    assert obj["status"]["rounds"] == [{"round": 1, "learningRate": 0.001}]

    await api.patch("FineTuneJob", "held", {"spec": {"suspend": False}})
    obj = await api.wait_for_phase("FineTuneJob", "held", "Training")
    assert _condition(obj, "Suspended")["status"] == "False"
    resumed = await api.wait_for(lambda: _if_not_suspended(api, "held-r1"), what="round 1 Job resumed")
    assert resumed["metadata"]["uid"] == job["metadata"]["uid"]
    await trainer.succeed("held", 1, 0.9)
    await api.wait_for_phase("FineTuneJob", "held", "Succeeded")
    transitions = [e["message"].split(":")[0] for e in await api.events("held")]
    assert transitions == [
        "New -> Suspended",
        "Suspended -> BuildingDataset",
        "BuildingDataset -> Evaluating",
        "Evaluating -> Training",
        "Training -> Suspended",
        "Suspended -> Training",
        "Training -> Succeeded",
    ]


async def _if_not_suspended(api: Any, name: str) -> dict[str, Any] | None:
    job = await api.get("Job", name)
    return job if job is not None and job["spec"].get("suspend") is False else None


async def test_delete_removes_the_trainer_jobs(
    api: Any, ftj_operator: Any, kubelet: Any, models_dir: Path
) -> None:
    trainer = TrainerDouble(api, kubelet, models_dir)
    await api.create(finetune_manifest("gone"))
    await api.wait_for(lambda: api.get("Job", "gone-r0"), what="baseline Job")
    await trainer.succeed("gone", 0, 0.3)
    await api.wait_for(lambda: api.get("Job", "gone-r1"), what="round 1 Job")
    obj = await api.get("FineTuneJob", "gone")
    assert obj is not None and "lightning-op.dev/finalizer" in obj["metadata"]["finalizers"]
    baseline = 'lightning_op_finetune_score{model="baseline",name="gone",namespace="test"} 0.3'
    assert baseline in await ftj_operator.metrics()

    await api.delete("FineTuneJob", "gone")

    async def all_gone() -> bool:
        return await api.get("FineTuneJob", "gone") is None and await api.list("Job") == []

    await api.wait_for(all_gone, what="FineTuneJob and its Jobs deleted")
    assert 'name="gone"' not in await ftj_operator.metrics(), "its progress and scores leave with it"
    layout_dir = models_dir / "finetunejobs" / "test"
    assert any(layout_dir.iterdir()), "files on the model volume (dataset, adapters) are kept"


async def test_a_trainer_job_deleted_mid_round_is_created_again_and_the_job_finishes(
    api: Any, ftj_operator: Any, kubelet: Any, models_dir: Path
) -> None:
    """Deleting a round's Job by hand (or losing it with its node) stops the trainer after a
    checkpoint; its last word, on the volume, is ``Terminated`` and resumable. The FineTuneJob does
    not fail: it creates the round's Job again (a new uid, same name), which resumes and finishes."""
    trainer = TrainerDouble(api, kubelet, models_dir)
    await api.create(finetune_manifest("lost"))
    await api.wait_for(lambda: api.get("Job", "lost-r0"), what="baseline Job")
    await trainer.succeed("lost", 0, 0.3)
    first = await api.wait_for(lambda: api.get("Job", "lost-r1"), what="round 1 Job")
    await trainer.progress("lost", 1, 40.0)

    await trainer.deleted_mid_round("lost", 1)

    async def recreated() -> dict[str, Any] | None:
        job = await api.get("Job", "lost-r1")
        return job if job is not None and job["metadata"]["uid"] != first["metadata"]["uid"] else None

    again = await api.wait_for(recreated, what="round 1 Job created again")
    assert again["spec"]["template"]["spec"]["containers"][0].get("command") == first["spec"]["template"][
        "spec"
    ]["containers"][0].get("command")
    obj = await api.get("FineTuneJob", "lost")
    assert obj is not None and obj["status"]["phase"] == "Training"
    await trainer.succeed("lost", 1, 0.9, status_file=True)
    obj = await api.wait_for_phase("FineTuneJob", "lost", "Succeeded")
    assert obj["status"]["result"]["score"] == 0.9
    assert len(obj["status"]["rounds"]) == 1


async def test_a_job_left_by_an_earlier_finetunejob_of_the_same_name_is_not_adopted(
    api: Any, ftj_operator: Any, kubelet: Any, models_dir: Path
) -> None:
    """An earlier FineTuneJob ``again`` was deleted while the operator was down: its finished
    baseline Job (and that Job's pod, whose log says 0.99) still wait for the garbage collector.
    The new ``again`` deletes that Job, creates its own, and records its own baseline score."""
    old_uid = "00000000-0000-4000-8000-0000000000aa"
    await api.create(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": "again-r0",
                "labels": {
                    "app.kubernetes.io/managed-by": "lightning-op",
                    "lightning-op.dev/finetunejob-uid": old_uid,
                },
                "ownerReferences": [
                    {
                        "apiVersion": "lightning-op.dev/v1alpha1",
                        "kind": "FineTuneJob",
                        "name": "again",
                        "uid": old_uid,
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": {"template": {"spec": {"containers": [{"name": "trainer", "image": "trainer"}]}}},
        }
    )
    old_score = '{"event": "evaluated", "round": 1, "score": 0.99, "adapterPath": null}'
    await kubelet.serve_pod("again-r0", "again-r0-old", old_score)
    await kubelet.job_succeeded("again-r0")

    created = await api.create(finetune_manifest("again"))

    async def ours() -> dict[str, Any] | None:
        job = await api.get("Job", "again-r0")
        owners = [ref["uid"] for ref in ((job or {}).get("metadata") or {}).get("ownerReferences", [])]
        return job if owners == [created["metadata"]["uid"]] else None

    job = await api.wait_for(ours, what="the baseline Job of the new FineTuneJob")
    assert "status" not in job or not job["status"].get("conditions"), "a fresh Job, not the finished one"
    trainer = TrainerDouble(api, kubelet, models_dir)
    await trainer.succeed("again", 0, 0.3)
    obj = await api.wait_for_phase("FineTuneJob", "again", "Training")
    assert obj["status"]["baseline"]["score"] == 0.3
