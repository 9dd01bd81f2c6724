"""A FineTuneJob from creation to its final phase, as a user sees it in status and Events.

Covers, with the real operator against the API-server emulator and the test playing the kubelet and
the trainer pods: the dataset snapshot (sha256, counts, rewards; files and trainer configs on the
model volume), the baseline Job (round 0, ``evaluate``) then one Job per round with the learning rate
decayed by ``lrDecay``, progress copied from the pod log, each round's score from the trainer's final
JSON line, the result against the baseline example by example, ``fineTunedModel`` = the best round's
adapter, a Normal Event per phase change; ``MaxRoundsReached`` (Failed, with result and the best round
recorded); the trainer's and the Job's failure reasons (Diverged, OutOfMemory, DeadlineExceeded,
BackoffLimitExceeded) as a Warning; a job with no evaluation (one round, Succeeded); a round's Job
refused by a full ResourceQuota waits (QuotaExceeded) and runs once the quota has room; a trainer
pod no node fits, or whose image cannot be pulled, or that a GPU quota keeps from being created (the
Job's FailedCreate Event), says so in Ready until it runs; an unchanged
object costs no write calls, nor does a restart against a Succeeded one; and a finished round whose
trainer wrote its files on the volume costs no reads of its Job, pods or pod log (the watch reported
the Job, the volume holds the result).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.printer import printed
from support.trainer_double import TrainerDouble, finetune_manifest, seed_episodes

from lightning_op.manifests import trainer_job

from .conftest import TEST_USER_AGENT

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    path = tmp_path / "models"
    path.mkdir()
    return path


@pytest.fixture
async def ftj_operator(operator_process: Any, models_dir: Path, store_url: str) -> Any:
    seed_episodes(store_url, "bot", 12, reward=0.9)
    seed_episodes(store_url, "bot", 5, reward=0.2, start=100)
    return await operator_process.start(LIGHTNING_MODELS_DIR=str(models_dir))


@pytest.fixture
def trainer(api: Any, kubelet: Any, models_dir: Path) -> TrainerDouble:
    return TrainerDouble(api, kubelet, models_dir)


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == type_)


async def _job(api: Any, name: str) -> dict[str, Any]:
    return await api.wait_for(lambda: api.get("Job", name), timeout=10, what=f"Job {name}")


async def test_rounds_until_the_threshold_is_met(
    api: Any, ftj_operator: Any, trainer: TrainerDouble, models_dir: Path
) -> None:
    await api.create(finetune_manifest("ftj-1"))
    obj = await api.wait_for_phase("FineTuneJob", "ftj-1", "Evaluating")
    dataset = obj["status"]["dataset"]
    assert dataset["episodes"] == 12 and len(dataset["sha256"]) == 64
    assert dataset["avgReward"] == pytest.approx(0.9) and dataset["minReward"] == pytest.approx(0.9)
    layout = await trainer.layout("ftj-1")
    assert layout.in_operator(models_dir, layout.dataset).is_file()
    assert _condition(obj, "DatasetReady")["status"] == "True"

    baseline_job = await _job(api, "ftj-1-r0")
    command = baseline_job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:4] == ["python", "-m", "lightning_op.trainer", "evaluate"]
    config = yaml.safe_load(layout.in_operator(models_dir, layout.config_file(0)).read_text())
    assert config["trainFile"] == layout.in_trainer(layout.dataset)
    assert config["baseModel"] == "/models/base/tiny"
    assert baseline_job["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]

    await trainer.succeed("ftj-1", 0, 0.4, examples=[0.0, 0.5, 1.0, 0.0])
    obj = await api.wait_for_phase("FineTuneJob", "ftj-1", "Training")
    assert obj["status"]["baseline"] == {"score": 0.4}
    assert obj["status"]["rounds"][0]["learningRate"] == pytest.approx(0.001)
    await _job(api, "ftj-1-r1")

    await trainer.progress("ftj-1", 1, 50.0)

    async def half_done() -> bool:
        progress = ((await api.get("FineTuneJob", "ftj-1")) or {}).get("status", {}).get("progress") or {}
        return progress.get("percent") == 50 and progress.get("step") == 5 and progress.get("round") == 1

    await api.wait_for(half_done, what="progress 50% copied from the pod log")
    mark = api.mark()
    await _sleep_ticks()
    assert api.writes_since(mark) == [], "an unchanged round must cost no writes"

    await trainer.succeed("ftj-1", 1, 0.6, examples=[0.0, 1.0, 1.0, 0.0])
    round2 = await _job(api, "ftj-1-r2")
    config = yaml.safe_load(layout.in_operator(models_dir, layout.config_file(2)).read_text())
    assert config["hyperparameters"]["learningRate"] == pytest.approx(0.0005)
    assert config["initAdapter"] == layout.in_trainer(layout.round_dir(1) / "adapter")
    assert config["resumeFrom"] == "auto"
    assert round2["spec"]["template"]["spec"]["containers"][0]["command"][-1] == layout.in_trainer(
        layout.config_file(2)
    )
    obj = await api.get("FineTuneJob", "ftj-1")
    assert obj is not None
    assert obj["status"]["rounds"][0]["score"] == pytest.approx(0.6)
    assert obj["status"]["result"]["improvements"] == 1 and obj["status"]["result"]["regressions"] == 0

    await trainer.succeed("ftj-1", 2, 0.8, examples=[1.0, 1.0, 1.0, 0.0])
    obj = await api.wait_for_phase("FineTuneJob", "ftj-1", "Succeeded")
    status = obj["status"]
    adapter = layout.in_trainer(layout.round_dir(2) / "adapter")
    assert status["fineTunedModel"] == adapter
    assert {k: v for k, v in printed(obj).items() if k != "Age"} == {
        "Phase": "Succeeded",
        "Progress": 100,
        "Round": 2,
        "Score": 0.8,
        "Backend": "local",
        "ETA": None,
        "Model": adapter,
        "Reason": _condition(obj, "Ready")["reason"],
    }, "what kubectl get ftj -o wide shows"
    assert status["result"] == {
        "score": 0.8,
        "improvements": 2,
        "regressions": 0,
        "examples": 4,
        "passed": True,
    }
    assert [r["round"] for r in status["rounds"]] == [1, 2]
    assert status["rounds"][1] == {
        "round": 2,
        "learningRate": pytest.approx(0.0005),
        "trainLoss": 0.5,
        "validLoss": 0.75,
        "score": 0.8,
        "checkpoint": adapter,
    }
    assert status["progress"]["percent"] == 100
    assert _condition(obj, "Ready")["status"] == "True"
    assert _condition(obj, "EvaluationPassed")["status"] == "True"
    assert status["observedGeneration"] == obj["metadata"]["generation"]

    events = [(e["type"], e["reason"], e["message"]) for e in await api.events("ftj-1")]
    transitions = [m.split(":")[0] for _, _, m in events]
    assert transitions == [
        "New -> BuildingDataset",
        "BuildingDataset -> Evaluating",
        "Evaluating -> Training",
        "Training -> Succeeded",
    ], events
    assert all(t == "Normal" for t, _, _ in events)
    jobs = await api.list("Job", selector=trainer_job.label_selector(obj))
    assert sorted(j["metadata"]["name"] for j in jobs) == ["ftj-1-r0", "ftj-1-r1", "ftj-1-r2"]

    mark = api.mark()
    await _sleep_ticks()
    assert api.writes_since(mark) == []

    # a restarted operator's daemon finds the job settled: it writes nothing
    await ftj_operator.restart()

    async def reconciled() -> bool:
        return 'handler="reconcile_finetune"' in await ftj_operator.metrics()

    await api.wait_for(reconciled, what="the restarted operator's first reconcile")
    await _sleep_ticks()
    assert api.writes_since(mark) == []
    metrics = await ftj_operator.metrics()
    assert 'lightning_op_finetune_score{model="baseline",name="ftj-1",namespace="test"} 0.4' in metrics
    assert 'lightning_op_finetune_score{model="best",name="ftj-1",namespace="test"} 0.8' in metrics


async def _sleep_ticks() -> None:
    await asyncio.sleep(1.0)


async def test_max_rounds_below_threshold_fails_with_the_best_round(
    api: Any, ftj_operator: Any, trainer: TrainerDouble
) -> None:
    manifest = finetune_manifest("ftj-2")
    manifest["spec"]["evaluation"]["maxRounds"] = 2
    await api.create(manifest)
    await _job(api, "ftj-2-r0")
    await trainer.succeed("ftj-2", 0, 0.3)
    await _job(api, "ftj-2-r1")
    await trainer.succeed("ftj-2", 1, 0.6)
    await _job(api, "ftj-2-r2")
    await trainer.succeed("ftj-2", 2, 0.5)
    obj = await api.wait_for_phase("FineTuneJob", "ftj-2", "Failed")
    status = obj["status"]
    failed = _condition(obj, "Failed")
    assert failed["reason"] == "MaxRoundsReached"
    assert "best score 0.600 is below threshold 0.750" in failed["message"]
    assert "best round 1" in failed["message"]
    assert status["result"]["score"] == 0.5 and status["result"]["passed"] is False
    assert "fineTunedModel" not in status
    assert _condition(obj, "EvaluationPassed")["status"] == "False"
    events = await api.events("ftj-2")
    assert events[-1]["type"] == "Warning" and events[-1]["reason"] == "MaxRoundsReached"


@pytest.mark.parametrize(
    "name,round_number,trainer_reason,job_reason,expected",
    [
        ("diverged", 1, "Diverged", "PodFailurePolicy", "Diverged"),
        ("oom", 1, "OutOfMemory", "PodFailurePolicy", "OutOfMemory"),
        ("deadline", 1, None, "DeadlineExceeded", "DeadlineExceeded"),
        ("backoff", 0, None, "BackoffLimitExceeded", "BackoffLimitExceeded"),
    ],
)
async def test_failure_reasons(
    api: Any,
    ftj_operator: Any,
    trainer: TrainerDouble,
    name: str,
    round_number: int,
    trainer_reason: str | None,
    job_reason: str,
    expected: str,
) -> None:
    await api.create(finetune_manifest(name))
    await _job(api, f"{name}-r0")
    if round_number == 1:
        await trainer.succeed(name, 0, 0.3)
        await _job(api, f"{name}-r1")
    await trainer.fail(
        name,
        round_number,
        trainer_reason=trainer_reason,
        job_reason=job_reason,
        message="loss is NaN at step 4" if trainer_reason == "Diverged" else "",
    )
    obj = await api.wait_for_phase("FineTuneJob", name, "Failed")
    failed = _condition(obj, "Failed")
    assert failed["reason"] == expected
    if trainer_reason == "Diverged":
        assert "round 1 failed: loss is NaN at step 4" in failed["message"]
    assert (await api.events(name))[-1]["type"] == "Warning"
    assert await api.get("Job", f"{name}-r{round_number + 1}") is None


async def test_without_evaluation_one_round_succeeds(
    api: Any, ftj_operator: Any, trainer: TrainerDouble
) -> None:
    await api.create(finetune_manifest("plain", evaluation=False))
    obj = await api.wait_for_phase("FineTuneJob", "plain", "Training")
    assert "baseline" not in obj["status"]
    await _job(api, "plain-r1")
    await trainer.succeed("plain", 1, 0.0)
    obj = await api.wait_for_phase("FineTuneJob", "plain", "Succeeded")
    assert obj["status"]["fineTunedModel"].endswith("/round-1/adapter")
    assert await api.get("Job", "plain-r0") is None


async def test_a_full_job_quota_makes_the_round_wait_not_fail(
    api: Any, ftj_operator: Any, trainer: TrainerDouble
) -> None:
    """A ResourceQuota on Jobs answers the round's create with 403 "exceeded quota": the FineTuneJob
    keeps its phase and says why (Ready False, QuotaExceeded, one Warning Event), retries every
    retry delay (1 s here) without rewriting its status, and runs once the quota has room."""
    api.emulator.quota_full["jobs"] = "trainer-jobs"
    mark = api.mark()
    await api.create(finetune_manifest("quota", evaluation=False))

    obj = await _ready(api, "quota", "QuotaExceeded")
    assert obj["status"]["phase"] == "Training"
    ready = _condition(obj, "Ready")
    assert ready["status"] == "False"
    assert ready["message"].startswith("waiting for quota: create Job test/quota-r1: 403 ")
    assert "exceeded quota: trainer-jobs" in ready["message"]
    await asyncio.sleep(1.5)  # the first retry's status drops the dataset's part of the message
    status_writes = len(api.writes_since(mark, "finetunejobs"))
    await asyncio.sleep(2.5)
    refused = [w for w in api.writes_since(mark, "jobs") if w.refused == 403]
    assert 3 <= len(refused) <= 6, "retried every retry delay, no storm"
    later = api.writes_since(mark, "finetunejobs")[status_writes:]
    assert not later, f"the same wait is not rewritten: {[str(w) for w in later]}"
    warnings = [e for e in await api.events("quota") if e["reason"] == "QuotaExceeded"]
    assert len(warnings) == 1 and warnings[0]["type"] == "Warning"
    assert await api.get("Job", "quota-r1") is None

    api.emulator.quota_full.clear()
    await _job(api, "quota-r1")
    obj = await api.get("FineTuneJob", "quota")
    assert obj is not None and obj["status"]["phase"] == "Training"
    await trainer.succeed("quota", 1, 0.0)
    obj = await api.wait_for_phase("FineTuneJob", "quota", "Succeeded")
    assert _condition(obj, "Ready")["status"] == "True"


async def _ready(api: Any, name: str, reason: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        obj = await api.get("FineTuneJob", name)
        ready = next(
            (c for c in ((obj or {}).get("status") or {}).get("conditions") or [] if c["type"] == "Ready"), {}
        )
        return obj if ready.get("reason") == reason else None

    return await api.wait_for(check, timeout=10, what=f"FineTuneJob {name} Ready reason {reason}")


async def test_a_trainer_pod_that_cannot_run_says_why_until_it_runs(
    api: Any, ftj_operator: Any, kubelet: Any, trainer: TrainerDouble
) -> None:
    """No node fits the trainer pod, then its image cannot be pulled: each shows in Ready with what
    Kubernetes said and one Warning Event, the phase stays Training; once the pod runs, Ready says
    what the round does again and the job finishes."""
    await api.create(finetune_manifest("stuck", evaluation=False))
    await _job(api, "stuck-r1")
    await kubelet.serve_pod("stuck-r1", "stuck-r1-abc", phase="Pending")
    unschedulable = (
        "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available"
    )
    pod_status = {
        "phase": "Pending",
        "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": unschedulable}
        ],
    }
    await api.patch("Pod", "stuck-r1-abc", {"status": pod_status}, subresource="status")
    obj = await _ready(api, "stuck", "Unschedulable")
    assert obj["status"]["phase"] == "Training"
    assert (
        _condition(obj, "Ready")["message"]
        == f"trainer pod stuck-r1-abc cannot be scheduled: {unschedulable}"
    )

    pulling = {
        "phase": "Pending",
        "conditions": [{"type": "PodScheduled", "status": "True"}],
        "containerStatuses": [
            {
                "name": "trainer",
                "ready": False,
                "state": {
                    "waiting": {
                        "reason": "ImagePullBackOff",
                        "message": 'Back-off pulling image "ghcr.io/lightning-op/trainer:0.1.0"',
                    }
                },
            }
        ],
    }
    await api.patch("Pod", "stuck-r1-abc", {"status": pulling}, subresource="status")
    obj = await _ready(api, "stuck", "ImagePullBackOff")
    assert _condition(obj, "Ready")["message"] == (
        "trainer pod stuck-r1-abc, container trainer: ImagePullBackOff: "
        'Back-off pulling image "ghcr.io/lightning-op/trainer:0.1.0"'
    )
    await asyncio.sleep(
        0.6
    )  # polled again (every 0.2 s here): the same wait is neither rewritten nor re-announced
    warnings = [(e["reason"], e["type"]) for e in await api.events("stuck") if e["type"] == "Warning"]
    assert warnings == [("Unschedulable", "Warning"), ("ImagePullBackOff", "Warning")]

    running = {
        "phase": "Running",
        "containerStatuses": [{"name": "trainer", "ready": True, "state": {"running": {}}}],
    }
    await api.patch("Pod", "stuck-r1-abc", {"status": running}, subresource="status")
    obj = await _ready(api, "stuck", "Training")
    assert _condition(obj, "Ready")["message"] == "training round 1"
    await trainer.succeed("stuck", 1, 0.0)
    await api.wait_for_phase("FineTuneJob", "stuck", "Succeeded")


async def test_a_job_whose_pods_a_gpu_quota_refuses_says_why_until_its_pod_runs(
    api: Any, ftj_operator: Any, kubelet: Any, trainer: TrainerDouble
) -> None:
    """The Job is created, but a ResourceQuota on GPUs refuses its pods: the Job controller says so
    only in a FailedCreate Event on the Job. Ready shows that message (one Warning Event on the
    FineTuneJob); once the pod runs, Ready says what the round does and the job finishes."""
    await api.create(finetune_manifest("gpu", evaluation=False))
    job = await _job(api, "gpu-r1")
    await api.patch("Job", "gpu-r1", {"status": {"startTime": "2026-12-03T10:00:00Z"}}, subresource="status")
    refused = (
        'Error creating: pods "gpu-r1-x7k2p" is forbidden: exceeded quota: gpu-quota, requested: '
        "requests.nvidia.com/gpu=1, used: requests.nvidia.com/gpu=4, limited: requests.nvidia.com/gpu=4"
    )
    for name, uid, message in (
        ("gpu-r1.other", "uid-of-an-earlier-job", "an earlier Job of this name"),
        ("gpu-r1.17e0", job["metadata"]["uid"], refused),
    ):
        await api.create(
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": name},
                "involvedObject": {"apiVersion": "batch/v1", "kind": "Job", "name": "gpu-r1", "uid": uid},
                "reason": "FailedCreate",
                "type": "Warning",
                "message": message,
                "lastTimestamp": "2026-12-03T10:00:01Z",
            }
        )
    obj = await _ready(api, "gpu", "FailedCreate")
    assert obj["status"]["phase"] == "Training"
    assert _condition(obj, "Ready")["message"] == f"Job gpu-r1 cannot create its trainer pod: {refused}"
    warnings = [e for e in await api.events("gpu") if e["type"] == "Warning"]
    assert [e["reason"] for e in warnings] == ["FailedCreate"]

    await trainer.log("gpu", 1, "")  # the quota has room again: the pod runs
    await _ready(api, "gpu", "Training")
    await trainer.succeed("gpu", 1, 0.0)
    await api.wait_for_phase("FineTuneJob", "gpu", "Succeeded")


def _reads_of(api: Any, mark: int, job: str) -> list[str]:
    """The operator's GETs after ``mark`` of the Job ``job``, its pods or their logs."""
    return [read for read in api.operator_reads_since(mark) if read.startswith("GET pods") or job in read]


async def _running_and_read(api: Any, trainer: TrainerDouble, ftj: str, number: int) -> int:
    """Start the round's trainer pod (the Job turns active), wait until the operator read its log,
    and return a mark from there on: with a long poll interval, the operator reads nothing more
    until the Job changes again."""
    mark = api.mark()
    if number == 0:
        await trainer.log(ftj, number, "")
    else:
        await trainer.progress(ftj, number, 50.0)
    pod_log = f"GET pods/log {trainer.job(ftj, number)}-pod"

    async def read() -> bool:
        return pod_log in api.operator_reads_since(mark)

    await api.wait_for(read, what=f"the operator reading {pod_log}")
    await asyncio.sleep(0.5)  # the rest of that tick (a status write, the tick after it)
    return api.mark()


async def test_a_finished_round_is_read_from_the_watch_and_the_volume(
    api: Any, operator_process: Any, models_dir: Path, store_url: str, trainer: TrainerDouble
) -> None:
    """Once a round's Job finished, its result costs no reads: the Job's body came with the watch
    event, the trainer's files on the volume hold the final line (no pod list, no pod log)."""
    seed_episodes(store_url, "bot", 12, reward=0.9)
    await operator_process.start(LIGHTNING_MODELS_DIR=str(models_dir), LIGHTNING_FINETUNE_POLL_SECONDS="60")
    await api.create(finetune_manifest("vol"))
    await _job(api, "vol-r0")
    mark = await _running_and_read(api, trainer, "vol", 0)
    await trainer.succeed("vol", 0, 0.4, examples=[0.0, 0.5, 1.0, 0.0])  # the baseline file holds the score
    obj = await api.wait_for_phase("FineTuneJob", "vol", "Training")
    assert obj["status"]["baseline"] == {"score": 0.4}
    await _job(api, "vol-r1")
    assert _reads_of(api, mark, "vol-r0") == []

    mark = await _running_and_read(api, trainer, "vol", 1)
    await trainer.succeed("vol", 1, 0.9, examples=[1.0, 1.0, 1.0, 0.5], status_file=True)
    obj = await api.wait_for_phase("FineTuneJob", "vol", "Succeeded")
    assert obj["status"]["result"]["score"] == 0.9
    assert obj["status"]["fineTunedModel"].endswith("/round-1/adapter")
    assert obj["status"]["rounds"][0]["trainLoss"] == 0.5
    assert _reads_of(api, mark, "vol-r1") == []


async def test_only_trainer_jobs_are_watched(api: Any, ftj_operator: Any) -> None:
    """The operator's list and watch of Jobs ask the API server for its trainer Jobs only (a label
    selector, filtered server-side): a cluster's other Jobs are never sent to it."""

    async def job_watches() -> list[Any]:
        return [
            r
            for r in api.emulator.history
            if r.method == "GET"
            and r.resource is not None
            and r.resource.plural == "jobs"
            and r.name is None
            and r.headers.get("User-Agent") != TEST_USER_AGENT
        ]

    requests = await api.wait_for(job_watches, what="the operator's list or watch of Jobs")
    selector = f"{trainer_job.LABEL_MANAGED_BY}={trainer_job.MANAGED_BY}"
    assert {r.params.get("labelSelector") for r in requests} == {selector}
