"""The trainer's side of FineTuneJob rounds, for operator tests that play the kubelet.

A real round is a trainer pod whose stdout carries JSON lines (``started``, ``progress``,
``evaluating``, ``completed``/``failed``; the baseline's ``evaluate`` prints one ``evaluated`` line)
and which writes its evaluation files on the model volume. ``TrainerDouble`` does what that pod
would: it serves the pod log through the ``Kubelet`` fixture, writes the evaluation files into the
operator's models directory, and marks the Job succeeded or failed. Also: labeled episodes in the
store and FineTuneJob / RewardLabeling manifests.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from lightning_op import store as store_mod
from lightning_op.api import episode as ep
from lightning_op.manifests import trainer_job
from lightning_op.pipeline import finetune_flow

T0 = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)


def seed_episodes(
    store_url: str,
    agent: str,
    count: int,
    *,
    reward: float | None = 0.9,
    start: int = 0,
    query: str | None = None,
) -> None:
    """``count`` episodes of ``agent`` (labeled with ``reward`` unless it is None)."""
    store = store_mod.open_store(store_url)
    try:
        episodes = []
        for number in range(start, start + count):
            labels = [ep.Label(score=reward, grader="seed")] if reward is not None else []
            episodes.append(
                ep.Episode(
                    agent_id=agent,
                    session_id=f"s-{number}",
                    turn=0,
                    timestamp=T0 + timedelta(minutes=number),
                    state=ep.State(query=query.format(n=number) if query else f"where is order {number}?"),
                    action=ep.Action(tool="lookup_order", arguments={"order": number}),
                    reward=reward,
                    labeled=reward is not None,
                    labels=labels,
                )
            )
        store.insert_many(episodes)
    finally:
        store.close()


def finetune_manifest(name: str, *, evaluation: bool = True, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "agentId": "bot",
        "baseModel": "base/tiny",
        "modelVolume": {"claimName": "models"},
        "hyperparameters": {"learningRate": 0.001, "epochs": 1},
    }
    if evaluation:
        body["evaluation"] = {
            "grader": {"preset": "tool_selection"},
            "threshold": 0.75,
            "maxRounds": 3,
            "lrDecay": 0.5,
        }
    body.update(spec)
    return {
        "apiVersion": "lightning-op.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": body,
    }


def line(event: str, **fields: Any) -> str:
    return json.dumps({"event": event, **fields})


class TrainerDouble:
    """Plays the trainer pods of one namespace's FineTuneJobs (see the module docstring)."""

    def __init__(self, api: Any, kubelet: Any, models_dir: Path) -> None:
        self.api = api
        self.kubelet = kubelet
        self.models_dir = models_dir
        self.pods: dict[str, str] = {}

    async def layout(self, ftj: str) -> finetune_flow.VolumeLayout:
        body = await self.api.get("FineTuneJob", ftj)
        assert body is not None, f"no FineTuneJob {ftj}"
        return finetune_flow.VolumeLayout.of(body)

    def job(self, ftj: str, number: int) -> str:
        return trainer_job.job_name(ftj, number)

    async def log(self, ftj: str, number: int, text: str) -> None:
        """Serve ``text`` as the log of the round's pod (created on first use)."""
        job = self.job(ftj, number)
        pod = self.pods.get(job)
        if pod is None:
            pod = self.pods[job] = f"{job}-pod"
            await self.kubelet.serve_pod(job, pod, text)
        else:
            self.kubelet.set_log(pod, text)

    async def progress(self, ftj: str, number: int, percent: float, *, step: int = 5, total: int = 10) -> str:
        text = "\n".join(
            [
                line("started", round=number, totalSteps=total, epochs=1),
                "2026-01-10 12:00:01 INFO lightning_op.training.local: loading the base model",
                line(
                    "progress",
                    round=number,
                    percent=percent,
                    epoch=1,
                    step=step,
                    totalSteps=total,
                    loss=1.25,
                    etaSeconds=30.0,
                ),
            ]
        )
        await self.log(ftj, number, text)
        return text

    async def write_evaluation(
        self, ftj: str, number: int, scores: list[float], score: float | None = None
    ) -> None:
        """The round's evaluation file: ``score`` (the one its final line reports; default the mean)
        and the per-example scores."""
        layout = await self.layout(ftj)
        path = layout.in_operator(self.models_dir, layout.result_file(number))
        path.parent.mkdir(parents=True, exist_ok=True)
        per_example = [{"index": i, "score": s} for i, s in enumerate(scores)]
        overall = score if score is not None else sum(scores) / len(scores)
        path.write_text(json.dumps({"score": overall, "perExample": per_example}))

    async def succeed(
        self,
        ftj: str,
        number: int,
        score: float,
        *,
        examples: list[float] | None = None,
        status_file: bool = False,
    ) -> str:
        """The round finished: its final line (with the score), its files, the Job marked succeeded.
        With ``status_file``, a training round's final line also goes to its status file on the
        volume, as the real trainer writes it before it exits."""
        layout = await self.layout(ftj)
        if examples is not None:
            await self.write_evaluation(ftj, number, examples, score)
        if number == 0:
            final = line(
                "evaluated",
                round=1,
                adapterPath=None,
                score=score,
                perMetric={"toolAccuracy": score},
                examples=len(examples or []),
            )
            text = final
        else:
            adapter = finetune_flow.VolumeLayout.in_trainer(layout.round_dir(number) / "adapter")
            final = line(
                "completed",
                round=number,
                reason="Completed",
                percent=100.0,
                adapterPath=adapter,
                trainLoss=0.5,
                validLoss=0.75,
                score=score,
                perMetric={"toolAccuracy": score},
            )
            text = "\n".join(
                [
                    await self.progress(ftj, number, 100.0, step=10),
                    line("evaluating", round=number, examples=3, adapterPath=adapter),
                    final,
                    "2026-01-10 12:00:09 INFO lightning_op.trainer: done",
                ]
            )
        await self.log(ftj, number, text)
        if status_file and number > 0:
            path = layout.in_operator(self.models_dir, layout.status_file(number))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(final)
        await self.kubelet.job_succeeded(self.job(ftj, number))
        return text

    async def deleted_mid_round(self, ftj: str, number: int) -> None:
        """Someone deletes the round's Job (or its node goes): the pod gets SIGTERM, the trainer
        saves a checkpoint and writes its last line, ``failed``/``Terminated``/resumable, to the
        status file on the volume; the Job and its pod are gone."""
        layout = await self.layout(ftj)
        path = layout.in_operator(self.models_dir, layout.status_file(number))
        path.parent.mkdir(parents=True, exist_ok=True)
        checkpoint = finetune_flow.VolumeLayout.in_trainer(layout.round_dir(number) / "checkpoint")
        path.write_text(
            line(
                "failed",
                round=number,
                reason="Terminated",
                message="SIGTERM: stopped after a checkpoint",
                exitCode=143,
                checkpointPath=checkpoint,
                resumable=True,
            )
        )
        await self.api.delete("Job", self.job(ftj, number))

    async def fail(
        self, ftj: str, number: int, *, trainer_reason: str | None, job_reason: str, message: str = ""
    ) -> None:
        """The round failed: the trainer's ``failed`` line when it wrote one, the Job marked failed."""
        if trainer_reason is not None:
            await self.log(
                ftj,
                number,
                "\n".join(
                    [
                        await self.progress(ftj, number, 40.0),
                        line(
                            "failed",
                            round=number,
                            reason=trainer_reason,
                            message=message or trainer_reason,
                            exitCode=3,
                        ),
                    ]
                ),
            )
        await self.kubelet.job_failed(self.job(ftj, number), reason=job_reason)


def keyword_grader() -> dict[str, Any]:
    """A deterministic grader with spread: a quarter point per keyword (alpha, bravo, charlie, delta)
    found in the query, so queries with 1, 2 and 3 keywords score 0.25, 0.5 and 0.75."""
    words = {"a": "alpha", "b": "bravo", "c": "charlie", "d": "delta"}
    return {
        "type": "multi",
        "name": "keywords",
        "graders": {
            key: {
                "type": "string_check",
                "input": "{{episode.state.query}}",
                "reference": word,
                "operation": "like",
            }
            for key, word in words.items()
        },
        "calculate_output": "(a + b + c + d) / 4",
    }


def seed_keyword_episodes(
    store_url: str, agent: str, *, per_level: int = 10, levels: tuple[int, ...] = (1, 2, 3), start: int = 0
) -> int:
    """Unlabeled episodes whose queries carry 1, 2, 3 (or 4) keywords, ``per_level`` of each: with
    levels 1-3 the keyword grader's dry run is GO (mean 0.5, std 0.2); with only 4 it is NO-GO."""
    words = ["alpha", "bravo", "charlie", "delta"]
    offset = start
    for level in levels:
        seed_episodes(
            store_url,
            agent,
            per_level,
            reward=None,
            start=offset,
            query=" ".join(words[:level]) + " request {n}",
        )
        offset += per_level
    return offset - start


def labeling_manifest(name: str, agent: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"agentId": agent, "grader": keyword_grader(), "sampleTest": {"size": 5}}
    body.update(spec)
    return {
        "apiVersion": "lightning-op.dev/v1alpha1",
        "kind": "RewardLabeling",
        "metadata": {"name": name},
        "spec": body,
    }
