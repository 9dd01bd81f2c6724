"""A RewardLabeling whose LLM judge is down waits for it instead of failing, and finishes once it is up.

The real operator grades with a ``score_model`` judge served by ``testing.judge_server`` over HTTP.
While the judge answers every request with HTTP 500 (retryable: the pipeline retries each episode
with backoff), the sample test fails on every episode: the object waits in phase Pending with
``SampleTested`` and ``Ready`` False, reason ``BackendUnavailable``, the judge's error in the
message and per episode in ``status.sample``, and one Warning Event however often it tests again.
Once the judge answers, the sample test passes and the labeling runs to a verdict with no change to
the spec. A judge that answers with something no parser can read is not an outage: that sample test
fails the object (``SampleTestFailed``), as before. A judge that goes down in the middle of the
labeling gives no verdict (rather than a NO-GO from no scores): the object stays Labeling with
``BackendUnavailable`` until the judge answers, and the episodes that failed meanwhile are labeled.
A judge that goes down right after the sample test stops the labeling early with nothing recorded.
A spec change during a slow judge's labeling stops that run within a poll (its labels kept).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from support.trainer_double import keyword_grader, seed_keyword_episodes

from lightning_op import store as store_mod
from lightning_op.store import base as store_base
from lightning_op.testing import judge_server as js

pytestmark = pytest.mark.timeout(90)


def _manifest(name: str, base_url: str) -> dict[str, Any]:
    return {
        "apiVersion": "lightning-op.dev/v1alpha1",
        "kind": "RewardLabeling",
        "metadata": {"name": name},
        "spec": {
            "agentId": "bot",
            "grader": {
                "type": "score_model",
                "name": "helpfulness",
                "model": "judge-test",
                "base_url": base_url,
                "range": [0, 10],
                "input": [{"role": "user", "content": "Query: {{episode.state.query}}"}],
            },
            "sampleTest": {"size": 5},
            "dryRun": {"sampleSize": 20},
        },
    }


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == type_)


async def test_a_judge_that_is_down_keeps_the_labeling_pending_until_it_answers(
    api: Any, operator_process: Any, store_url: str
) -> None:
    seed_keyword_episodes(store_url, "bot")
    state = {"down": True}

    def rule(request: js.JudgeRequest) -> js.Fault | None:
        if "junk" in request.prompt:
            return js.Fault.JUNK
        return js.Fault.SERVER_ERROR if state["down"] else None

    server = js.JudgeServer(faults=js.Faults(rule=rule))
    async with server as base_url:
        await operator_process.start()
        await api.create(_manifest("rl", base_url))

        obj = await api.wait_for_phase("RewardLabeling", "rl", "Pending", timeout=30)
        tested, ready = _condition(obj, "SampleTested"), _condition(obj, "Ready")
        assert (tested["status"], tested["reason"]) == ("False", "BackendUnavailable")
        assert (ready["status"], ready["reason"]) == ("False", "BackendUnavailable")
        assert "failed on all 5 sample episodes" in ready["message"]
        assert "HTTP 500" in ready["message"]
        assert len(obj["status"]["sample"]) == 5
        assert all(r.get("score") is None and "HTTP 500" in r["error"] for r in obj["status"]["sample"])

        # tested again every retry delay, still down: one Warning, the phase kept
        requests = server.stats.requests
        await api.wait_for(
            lambda: _more(server, requests + 5), timeout=20, what="the sample test tried again"
        )
        obj = await api.get("RewardLabeling", "rl")
        assert obj["status"]["phase"] == "Pending"
        warnings = [(e["reason"], e["type"]) for e in await api.events("rl") if e["type"] == "Warning"]
        assert warnings == [("BackendUnavailable", "Warning")]

        state["down"] = False
        obj = await api.wait_for_phase("RewardLabeling", "rl", "Completed", timeout=40)
        assert obj["status"]["labeled"] == 30 and obj["status"]["failed"] == 0
        assert _condition(obj, "SampleTested")["reason"] == "SampleTestPassed"
        assert obj["status"]["verdict"] in ("GO", "WARNING", "NO-GO")

        # a reply no parser can read is the grader's fault, not an outage: the object fails
        seed_keyword_episodes(store_url, "junk-bot", levels=(1,), per_level=5)
        junk = _manifest("rl-junk", base_url)
        junk["spec"]["agentId"] = "junk-bot"
        junk["spec"]["grader"]["input"][0]["content"] = "junk {{episode.state.query}}"
        await api.create(junk)
        obj = await api.wait_for_phase("RewardLabeling", "rl-junk", "Failed", timeout=30)
        assert _condition(obj, "Ready")["reason"] == "SampleTestFailed"


async def test_a_judge_that_goes_down_mid_labeling_gives_no_verdict_and_uses_up_no_tries(
    api: Any, operator_process: Any, store_url: str
) -> None:
    """The sample test (5 requests) and the first 15 labeling requests pass; then the judge fails
    every request: 15 episodes fail (after retries) and the dry run has no score at all. No NO-GO
    verdict from an outage: the object stays Labeling with ``Ready`` BackendUnavailable (one Warning,
    no status writes while it retries), and while the judge is down each retry grades only a few
    sample episodes, so the failed episodes keep their tries. Once the judge answers, they are
    labeled and the object completes."""
    seed_keyword_episodes(store_url, "bot")
    judge = _DownAfter(20)
    server = judge.server
    async with server as base_url:
        await operator_process.start()
        await api.create(_manifest("rl", base_url))

        obj = await api.wait_for(lambda: _outage(api, "rl"), timeout=40, what="the dry run's outage in Ready")
        ready = _condition(obj, "Ready")
        assert obj["status"]["phase"] == "Labeling" and "verdict" not in obj["status"]
        assert ready["status"] == "False" and "failed on all 20 dry-run episodes" in ready["message"]
        assert (obj["status"]["labeled"], obj["status"]["failed"]) == (15, 15)

        mark = api.mark()
        requests = server.stats.requests
        await api.wait_for(lambda: _more(server, requests + 40), timeout=30, what="two more tries")
        assert api.writes_since(mark, "rewardlabelings") == [], "no status writes while it retries"
        warnings = [e["reason"] for e in await api.events("rl") if e["type"] == "Warning"]
        assert warnings == ["BackendUnavailable"]
        failed_once = [labels for labels in _judge_labels(store_url) if labels and labels[0]["score"] is None]
        assert len(failed_once) == 15 and all(len(labels) == 1 for labels in failed_once), (
            "the retries graded sample episodes only: no failed episode lost another try"
        )

        judge.down = False
        obj = await api.wait_for_phase("RewardLabeling", "rl", "Completed", timeout=40)
        assert (obj["status"]["labeled"], obj["status"]["failed"]) == (30, 0)
        assert obj["status"]["scores"]["count"] == 20
        assert _condition(obj, "Ready")["reason"].startswith("Verdict")
        assert all(any(lb["score"] is not None for lb in labels) for labels in _judge_labels(store_url))


async def test_a_judge_that_goes_down_before_labeling_records_nothing(
    api: Any, operator_process: Any, store_url: str
) -> None:
    """The sample test passes (5 requests), then the judge fails every request: the labeling stops
    early (``OUTAGE_STOP_AFTER`` gradings) and records no failed label, the dry run is not tried
    against the dead judge, and the object waits in Labeling with ``BackendUnavailable``. Once the
    judge answers, every episode is labeled and the object completes."""
    seed_keyword_episodes(store_url, "bot")
    judge = _DownAfter(5)
    server = judge.server
    async with server as base_url:
        await operator_process.start()
        await api.create(_manifest("rl-early", base_url))

        obj = await api.wait_for(
            lambda: _outage(api, "rl-early"), timeout=40, what="the labeling's outage in Ready"
        )
        ready = _condition(obj, "Ready")
        assert obj["status"]["phase"] == "Labeling" and "verdict" not in obj["status"]
        assert "none was recorded (they keep their tries)" in ready["message"], ready["message"]
        assert "failed on all" in ready["message"] and "dry-run" not in ready["message"]
        assert all(labels == [] for labels in _judge_labels(store_url)), "no failed label: no try used"

        judge.down = False
        obj = await api.wait_for_phase("RewardLabeling", "rl-early", "Completed", timeout=40)
        assert (obj["status"]["labeled"], obj["status"]["failed"]) == (30, 0)
        assert all(len(labels) == 1 and labels[0]["error"] is None for labels in _judge_labels(store_url))


class _DownAfter:
    """A judge that answers its first ``answered`` requests, then fails each with HTTP 500 while
    ``down``."""

    def __init__(self, answered: int) -> None:
        self.answered = answered
        self.down = True
        self.server = js.JudgeServer(faults=js.Faults(rule=self.rule))

    def rule(self, request: js.JudgeRequest) -> js.Fault | None:
        return js.Fault.SERVER_ERROR if request.seq > self.answered and self.down else None


def _judge_labels(store_url: str) -> list[list[dict[str, Any]]]:
    """Each episode's labels by the judge (``score``, ``error``)."""
    store = store_mod.open_store(store_url)
    try:
        query = store_base.EpisodeQuery(agent_id="bot")
        return [
            [{"score": lb.score, "error": lb.error} for lb in e.labels if lb.grader == "helpfulness"]
            for e in store.iter_episodes(query)
        ]
    finally:
        store.close()


async def _outage(api: Any, name: str) -> dict[str, Any] | None:
    """The RewardLabeling when one of its conditions says BackendUnavailable, else None."""
    obj = await api.get("RewardLabeling", name)
    conditions = (obj or {}).get("status", {}).get("conditions") or []
    return obj if any(c["reason"] == "BackendUnavailable" for c in conditions) else None


async def _more(server: js.JudgeServer, count: int) -> bool:
    return server.stats.requests >= count


async def test_a_spec_change_stops_the_labeling_run_of_the_grader_it_replaced(
    api: Any, operator_process: Any, store_url: str
) -> None:
    """A slow judge labels 300 episodes one at a time (30 s); the user replaces the grader early. The
    judge's run stops within a poll (its labels so far written, no more judge calls, no verdict for
    it) and the new grader labels the rest and gives the verdict."""
    seed_keyword_episodes(store_url, "bot", per_level=100)
    server = js.JudgeServer(latency_ms=100)
    async with server as base_url:
        await operator_process.start()
        body = _manifest("rl", base_url)
        body["spec"]["concurrency"] = 1
        await api.create(body)
        await api.wait_for_phase("RewardLabeling", "rl", "Labeling", timeout=30)
        await api.wait_for(lambda: _more(server, 20), timeout=20, what="the judge labeling")

        replace = {"op": "replace", "path": "/spec/grader", "value": keyword_grader()}
        await api.patch("RewardLabeling", "rl", [replace])
        obj = await api.wait_for_phase("RewardLabeling", "rl", "Completed", timeout=30)
        calls = server.stats.requests
        assert obj["status"]["observedGeneration"] == 2
        labeled_by_keywords = obj["status"]["labeled"]
        await asyncio.sleep(1.0)
        assert server.stats.requests == calls, "the judge's run was stopped"
        assert calls < 150

    store = store_mod.open_store(store_url)
    try:
        judged = [
            e
            for e in store.iter_episodes(store_base.EpisodeQuery(agent_id="bot"))
            if any(lb.grader == "helpfulness" for lb in e.labels)
        ]
    finally:
        store.close()
    assert 0 < len(judged) < 150, "the judge's labels graded before the change were kept"
    # unlabeledOnly (the default): the keyword grader labeled the episodes the judge had not
    assert labeled_by_keywords == 300 - len(judged)
