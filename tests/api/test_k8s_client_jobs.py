"""``k8s.Cluster``'s Job calls against the API-server emulator, as the FineTuneJob controller uses them.

Covers: a Job is created from the builder's dict exactly as built (a field the kubernetes client's
models do not know still reaches the API server); creating it again adopts the existing one (409:
same uid, ``created`` False), which is what makes an operator restart safe; an unreachable API
server is ``k8s.Unavailable`` (retried later), not a crash.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest

from lightning_op import k8s

from .conftest import NAMESPACE


def _job(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "lightning-op"}},
        "spec": {
            "backoffLimit": 1,
            # not in the client's V1JobSpec model: the client's typed method would have dropped it
            "x-lightning-op-future-field": {"kept": True},
            "template": {
                "spec": {"restartPolicy": "Never", "containers": [{"name": "trainer", "image": "trainer:1"}]}
            },
        },
    }


async def test_a_job_is_created_as_built_and_adopted_when_it_exists(api: Any) -> None:
    cluster = k8s.Cluster(k8s.load_api_client(api.url))
    created, fresh = await asyncio.to_thread(cluster.create_or_adopt_job, NAMESPACE, _job("ftj-r1"))
    assert fresh is True
    assert created["metadata"]["name"] == "ftj-r1" and created["metadata"]["uid"]
    stored = await api.get("Job", "ftj-r1")
    assert stored["spec"]["x-lightning-op-future-field"] == {"kept": True}
    assert stored["spec"]["template"]["spec"]["containers"][0]["image"] == "trainer:1"

    again, fresh = await asyncio.to_thread(cluster.create_or_adopt_job, NAMESPACE, _job("ftj-r1"))
    assert fresh is False
    assert again["metadata"]["uid"] == created["metadata"]["uid"]
    # the second create was refused (409) and changed nothing: the Job was written once
    assert [(w.method, w.name, w.refused) for w in api.writes_since(0, "jobs")] == [
        ("POST", "ftj-r1", None),
        ("POST", "ftj-r1", 409),
    ]


async def test_an_unreachable_api_server_is_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends: nothing listens there
    client = k8s.load_api_client(f"http://127.0.0.1:{port}")
    client.configuration.retries = 0
    cluster = k8s.Cluster(client)
    with pytest.raises(k8s.Unavailable, match="create Job test/ftj-r1"):
        await asyncio.to_thread(cluster.create_or_adopt_job, NAMESPACE, _job("ftj-r1"))


async def test_an_api_server_that_never_answers_is_unavailable_after_the_timeout() -> None:
    """A connection that is accepted and never answered (a hung API server, a dead load balancer)
    ends in ``Unavailable``, retried by the controllers, instead of holding a worker thread forever."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = k8s.load_api_client(f"http://127.0.0.1:{port}")
        client.configuration.retries = 0
        cluster = k8s.Cluster(client, timeout=(1.0, 1.0))
        started = time.monotonic()
        with pytest.raises(k8s.Unavailable, match="get Deployment test/agent"):
            await asyncio.to_thread(cluster.get_deployment, NAMESPACE, "agent")
        assert time.monotonic() - started < 5
    assert k8s.Cluster(client).timeout == k8s.REQUEST_TIMEOUT


async def test_patches_say_their_type_and_the_emulator_refuses_one_that_does_not_fit(api: Any) -> None:
    """The API server reads a PATCH by its Content-Type: a dict sent as a JSON patch is a 400, a
    strategic merge patch of a custom resource a 415. The emulator refuses both, so a call that
    leaves the type to the client fails here as it would against a cluster; ``Cluster.patch_job``
    (the FineTuneJob's suspend) names its type and goes through."""
    cluster = k8s.Cluster(k8s.load_api_client(api.url))
    await asyncio.to_thread(cluster.create_or_adopt_job, NAMESPACE, _job("ftj-r1"))

    patched = await asyncio.to_thread(cluster.patch_job, NAMESPACE, "ftj-r1", {"spec": {"suspend": True}})
    assert patched["spec"]["suspend"] is True

    url = f"{api.url}/apis/batch/v1/namespaces/{NAMESPACE}/jobs/ftj-r1"
    wrong = {"Content-Type": "application/json-patch+json"}
    async with api.session.patch(url, json={"spec": {"suspend": False}}, headers=wrong) as response:
        assert response.status == 400
        assert "JSON array of operations" in await response.text()
    await api.create({"kind": "FineTuneJob", "metadata": {"name": "x"}, "spec": {}}, validate=False)
    ftj_url = f"{api.url}/apis/lightning-op.dev/v1alpha1/namespaces/{NAMESPACE}/finetunejobs/x"
    smp = {"Content-Type": "application/strategic-merge-patch+json"}
    async with api.session.patch(ftj_url, json={"spec": {}}, headers=smp) as response:
        assert response.status == 415
    # the refused patch changed nothing
    job = await api.get("Job", "ftj-r1")
    assert job is not None and job["spec"]["suspend"] is True
