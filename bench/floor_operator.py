"""The second baseline of ``bench_operator.py``: the API work of a FineTuneJob's life, with none of
lightning-op's logic.

One kopf daemon per FineTuneJob, with lightning-op's kopf settings (``controllers.common.apply_settings``),
login and client (``lightning_op.k8s.Cluster`` in worker threads), does the writes lightning-op does:
four phase changes (a status merge patch and an Event each; New -> BuildingDataset -> Evaluating ->
Training -> Succeeded) and two ``batch/v1`` Jobs (the baseline evaluation, round 1), waiting for each
to finish through the Job watch. It parses no spec, opens no store, builds no dataset, writes no
trainer config and reads no result. So against the no-op handler it measures what the lifecycle's API
work costs on kopf (more writes, more watch events to process), and lightning-op against it measures
what its own logic costs.

    KUBECONFIG=... python bench/floor_operator.py --namespace NS
"""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import noop_operator

from lightning_op import k8s
from lightning_op.api import constants
from lightning_op.controllers import common
from lightning_op.manifests import trainer_job

registry = kopf.OperatorRegistry()
PHASES = ("BuildingDataset", "Evaluating", "Training", "Succeeded")


@kopf.on.startup(registry=registry)
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    common.apply_settings(settings)
    memo.cluster = k8s.Cluster(k8s.load_api_client())
    memo.finished = {}  # Job name -> asyncio.Event


@kopf.on.login(registry=registry)
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    return kopf.login_via_client(**kwargs)


def _finished(memo: kopf.Memo, name: str) -> asyncio.Event:
    found: asyncio.Event = memo.finished.setdefault(name, asyncio.Event())
    return found


@kopf.on.event("batch", "v1", "jobs", registry=registry)
async def job_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    conditions = (body.get("status") or {}).get("conditions") or []
    if any(c.get("type") == "Complete" and c.get("status") == "True" for c in conditions):
        _finished(memo, str(body.meta.name)).set()


def _job(body: kopf.Body, number: int) -> dict[str, Any]:
    name = f"{body.meta.name}-r{number}"
    labels = {
        trainer_job.LABEL_MANAGED_BY: trainer_job.MANAGED_BY,
        trainer_job.LABEL_FINETUNEJOB: str(body.meta.name),
        trainer_job.LABEL_FINETUNEJOB_UID: str(body.meta.uid),
        trainer_job.LABEL_ROUND: str(number),
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "trainer", "image": "trainer", "args": ["--round", str(number)]}],
                },
            },
        },
    }


@kopf.daemon(constants.GROUP, constants.VERSION, "finetunejobs", registry=registry, cancellation_timeout=5.0)
async def lifecycle(body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, **_: Any) -> None:
    if (body.get("status") or {}).get("phase") == "Succeeded":
        return
    cluster: k8s.Cluster = memo.cluster
    namespace, name = str(body.meta.namespace), str(body.meta.name)

    async def phase(value: str, previous: str) -> None:
        await asyncio.to_thread(
            cluster.patch_custom_status, "finetunejobs", namespace, name, {"phase": value}
        )
        kopf.info(body, reason=value, message=f"{previous} -> {value}")

    async def round_(number: int) -> None:
        done = _finished(memo, f"{name}-r{number}")
        await asyncio.to_thread(cluster.create_or_adopt_job, namespace, _job(body, number))
        await done.wait()
        memo.finished.pop(f"{name}-r{number}", None)

    await phase(PHASES[0], "New")
    await phase(PHASES[1], PHASES[0])
    await round_(0)
    await phase(PHASES[2], PHASES[1])
    await round_(1)
    await phase(PHASES[3], PHASES[2])
    await stopped.wait()


def main() -> None:
    noop_operator.run_operator(registry)  # the bench's folder is on sys.path: this script is in it


if __name__ == "__main__":
    main()
