"""``pipeline.labeling`` on the real SQLite store, with real graders and the fake judge over HTTP.

Covers: a rule grader (the ``tool_selection`` preset) labels every episode once, each label carrying
grader name, version, score, reason and time, through the store's batch write and through the
one-``add_label``-at-a-time fallback; a rerun grades nothing and calls no judge (resumable); ``limit``
counts only episodes graded; a manual label keeps winning; a label written concurrently by someone
else does not make ours fail or double; ``--min-score`` and ``--no-auto-label`` write nothing they
should not; a grader that raises fails only its episode; a store outage is retried, then raised as
the store's own error; cancelling a batch stops it promptly. The LLM judge path (``score_model`` through
the openai SDK against ``testing.judge_server``, OpenAI and Azure style): under a 429/500 storm, hangs
and unparsable replies every episode ends labeled or marked failed, none twice; Retry-After is
honoured; at most ``concurrency`` requests are ever in flight; the request-rate and token-rate limiter
holds its rate. A judge that never answers in a run stops it after ``OUTAGE_STOP_AFTER`` gradings
with nothing written (the episodes keep their tries); failures before its first answer are written
once it answers. The dry run writes nothing, samples reproducibly by seed and gives a verdict; the
sample test grades the newest episodes.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from lightning_op import graders
from lightning_op import store as store_mod
from lightning_op.api import episode as ep
from lightning_op.graders import base as graders_base
from lightning_op.graders import dryrun
from lightning_op.pipeline import labeling
from lightning_op.store import base as store_base
from lightning_op.testing import judge_server as js

T0 = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
TOOLS = ["get_weather", "search_docs", "lookup_order", "send_email"]
AGENT = "bot"


def make_episodes(
    count: int, *, agent: str = AGENT, start: int = 0, marks: dict[int, str] | None = None
) -> list[ep.Episode]:
    """Every third episode calls the wrong tool; ``marks`` puts a word in some queries (JUNK, HANG)."""
    episodes = []
    for i in range(start, start + count):
        expected = TOOLS[i % len(TOOLS)]
        chosen = TOOLS[(i + 1) % len(TOOLS)] if i % 3 == 0 else expected
        mark = (marks or {}).get(i, "")
        episodes.append(
            ep.Episode(
                agent_id=agent,
                session_id=f"s-{i}",
                turn=0,
                timestamp=T0 + timedelta(seconds=i),
                state=ep.State(query=f"question {i} {mark}".strip(), context={"expected_tool": expected}),
                action=ep.Action(tool=chosen, arguments={"n": i}),
            )
        )
    return episodes


def rule_grader() -> graders_base.Grader:
    return graders.build_grader(graders.load_grader_spec("tool_selection"))


def judge_grader(server: js.JudgeServer, *, azure: bool = False, **extra: Any) -> graders_base.Grader:
    spec: dict[str, Any] = {
        "type": "score_model",
        "name": "judge",
        "model": "judge-test",
        "input": [
            {"role": "user", "content": "Query: {{episode.state.query}}\nAgent: {{sample.output_text}}"}
        ],
        "timeout_s": 5,
        **extra,
    }
    if azure:
        spec["azure"] = {"endpoint": server.root_url, "deployment": "judge-dep", "api_version": "2024-10-21"}
        spec["api_key_env"] = "LIGHTNING_TEST_JUDGE_KEY"
    else:
        spec["base_url"] = server.base_url
    return graders.build_grader(graders.load_grader_spec(spec))


def labels_by(store: store_base.EpisodeStore, grader: str) -> dict[str, list[ep.Label]]:
    return {
        e.id: [label for label in e.labels if label.grader == grader]
        for e in store.iter_episodes(store_base.EpisodeQuery(agent_id=AGENT))
    }


@pytest.fixture
async def judge() -> AsyncIterator[Callable[..., Any]]:
    """Start judge servers on free ports; each is stopped at the end of the test."""
    servers: list[js.JudgeServer] = []

    async def start(**kwargs: Any) -> js.JudgeServer:
        server = js.JudgeServer(**kwargs)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


class NoBatchStore:
    """The real store without ``add_labels``: forces the pipeline's one-at-a-time fallback."""

    def __init__(self, inner: store_base.EpisodeStore) -> None:
        self._inner = inner
        self.add_label_calls = 0

    def __getattr__(self, name: str) -> Any:
        if name == "add_labels":
            raise AttributeError(name)
        return getattr(self._inner, name)

    def add_label(self, *args: Any, **kwargs: Any) -> ep.Episode:
        self.add_label_calls += 1
        return self._inner.add_label(*args, **kwargs)


# --- rule graders --------------------------------------------------------------------------------


@pytest.mark.parametrize("writes", ["batched", "one-by-one"])
async def test_rule_grader_labels_every_episode_once(store: store_base.EpisodeStore, writes: str) -> None:
    store.insert_many(make_episodes(120))
    target: Any = store if writes == "batched" else NoBatchStore(store)
    grader = rule_grader()
    seen: list[labeling.LabelingProgress] = []

    report = await labeling.label_batch(
        target, grader, agent_id=AGENT, write_batch_size=25, read_page_size=40, progress=seen.append
    )

    assert (report.graded, report.labeled, report.failed, report.skipped) == (120, 120, 0, 0)
    assert report.mean_score == pytest.approx(80 / 120)
    assert seen[-1].done == 120 and seen[-1].total == 120
    if writes == "one-by-one":
        assert target.add_label_calls == 120
    for episode in store.iter_episodes(store_base.EpisodeQuery(agent_id=AGENT)):
        (label,) = episode.labels
        assert label.grader == "tool_selection" and label.grader_version == grader.version
        assert label.score in (0.0, 1.0) and label.reason and label.error is None
        assert abs(label.at - datetime.now(UTC)) < timedelta(minutes=5)
        assert episode.labeled and episode.reward == label.score


async def test_rerun_labels_nothing_new(store: store_base.EpisodeStore) -> None:
    store.insert_many(make_episodes(50))
    await labeling.label_batch(store, rule_grader(), agent_id=AGENT)

    again = await labeling.label_batch(store, rule_grader(), agent_id=AGENT)

    assert (again.graded, again.labeled, again.skipped) == (0, 0, 50)
    assert all(len(labels) == 1 for labels in labels_by(store, "tool_selection").values())


async def test_another_grader_version_labels_again(store: store_base.EpisodeStore) -> None:
    store.insert_many(make_episodes(10))
    await labeling.label_batch(store, rule_grader(), agent_id=AGENT)
    changed = graders.build_grader(
        graders.load_grader_spec({"preset": "tool_selection", "case_sensitive": True})
    )

    report = await labeling.label_batch(store, changed, agent_id=AGENT)

    assert report.labeled == 10
    assert all(len(labels) == 2 for labels in labels_by(store, "tool_selection").values())


async def test_limit_counts_only_graded_episodes(store: store_base.EpisodeStore) -> None:
    store.insert_many(make_episodes(30))

    first = await labeling.label_batch(store, rule_grader(), agent_id=AGENT, limit=10)
    oldest = {
        e.state.query for e in store.iter_episodes(store_base.EpisodeQuery(agent_id=AGENT, labeled=True))
    }
    assert oldest == {f"question {i}" for i in range(10)}, "the limit takes the oldest, as documented"
    second = await labeling.label_batch(store, rule_grader(), agent_id=AGENT, limit=10, unlabeled_only=True)
    third = await labeling.label_batch(store, rule_grader(), agent_id=AGENT, limit=100)

    assert (first.labeled, second.labeled, third.labeled) == (10, 10, 10)
    assert store.count(AGENT, labeled=True) == 30


async def test_manual_label_wins(store: store_base.EpisodeStore) -> None:
    episodes = make_episodes(3, start=1)  # episode 1 calls the right tool: graded 1.0
    store.insert_many(episodes)
    store.add_label(episodes[0].id, ep.Label(score=0.1, grader="manual", manual=True, reason="reviewed"))

    report = await labeling.label_batch(store, rule_grader(), agent_id=AGENT)

    assert report.labeled == 3
    reviewed = store.get(episodes[0].id)
    assert reviewed is not None
    assert [label.grader for label in reviewed.labels] == ["manual", "tool_selection"]
    assert reviewed.labels[1].score == 1.0
    assert reviewed.reward == 0.1


async def test_concurrent_manual_label_neither_fails_nor_doubles(
    store: store_base.EpisodeStore, store_url: str
) -> None:
    episodes = make_episodes(20)
    store.insert_many(episodes)
    other = store_mod.open_store(store_url)
    inner = rule_grader()

    class MeddlingGrader:
        name, version = inner.name, inner.version

        async def grade(self, episode: ep.Episode) -> graders_base.GradeResult:
            if episode.id == episodes[5].id:  # someone labels it by hand while we grade it
                other.add_label(episode.id, ep.Label(score=0.3, grader="manual", manual=True))
            return await inner.grade(episode)

        async def aclose(self) -> None:
            await inner.aclose()

    try:
        report = await labeling.label_batch(store, MeddlingGrader(), agent_id=AGENT)
    finally:
        other.close()

    assert (report.labeled, report.failed) == (20, 0)
    meddled = store.get(episodes[5].id)
    assert meddled is not None
    assert [label.grader for label in meddled.labels] == ["manual", "tool_selection"]
    assert meddled.reward == 0.3
    assert all(len(labels) == 1 for labels in labels_by(store, "tool_selection").values())


async def test_min_score_and_review_mode_write_only_what_they_should(store: store_base.EpisodeStore) -> None:
    store.insert_many(make_episodes(30))

    review = await labeling.label_batch(store, rule_grader(), agent_id=AGENT, auto_label=False)
    assert (review.scored, review.labeled) == (30, 0)
    assert store.count(AGENT, labeled=True) == 0

    held = await labeling.label_batch(store, rule_grader(), agent_id=AGENT, min_score=0.5)
    assert (held.labeled, held.below_min_score) == (20, 10)
    assert store.count(AGENT, labeled=True) == 20


async def test_a_raising_grader_fails_only_its_episode(store: store_base.EpisodeStore) -> None:
    episodes = make_episodes(12)
    store.insert_many(episodes)
    inner = rule_grader()

    class Flaky:
        name, version = "flaky", "v1"

        async def grade(self, episode: ep.Episode) -> graders_base.GradeResult:
            if episode.id == episodes[4].id:
                raise RuntimeError("bug in grader")
            return await inner.grade(episode)

        async def aclose(self) -> None:
            return None

    report = await labeling.label_batch(store, Flaky(), agent_id=AGENT)

    assert (report.labeled, report.failed) == (11, 1)
    (label,) = labels_by(store, "flaky")[episodes[4].id]
    assert label.score is None and label.error is not None and "bug in grader" in label.error


class FailingStore(NoBatchStore):
    """The real store whose label writes fail ``failures`` times with StoreUnavailableError."""

    def __init__(self, inner: store_base.EpisodeStore, failures: int) -> None:
        super().__init__(inner)
        self.failures = failures

    def add_label(self, *args: Any, **kwargs: Any) -> ep.Episode:
        if self.failures:
            self.failures -= 1
            raise store_base.StoreUnavailableError("database is locked")
        return super().add_label(*args, **kwargs)


@pytest.mark.parametrize(("failures", "survives"), [(2, True), (100, False)], ids=["transient", "down"])
async def test_store_outage_is_retried_then_raised_as_is(
    store: store_base.EpisodeStore, monkeypatch: pytest.MonkeyPatch, failures: int, survives: bool
) -> None:
    monkeypatch.setattr(labeling, "STORE_RETRY_BASE_S", 0.001)
    store.insert_many(make_episodes(10))
    flaky = FailingStore(store, failures)

    if survives:
        report = await labeling.label_batch(flaky, rule_grader(), agent_id=AGENT)
        assert report.labeled == 10
        assert all(len(labels) == 1 for labels in labels_by(store, "tool_selection").values())
    else:
        with pytest.raises(store_base.StoreUnavailableError, match="locked"):
            await labeling.label_batch(flaky, rule_grader(), agent_id=AGENT)


# --- the LLM judge over HTTP ---------------------------------------------------------------------


def storm_rule() -> js.FaultRule:
    """Per prompt: JUNK always gets junk, HANG always hangs; others get 429, then 500, then an answer."""
    attempts: collections.Counter[str] = collections.Counter()

    def rule(request: js.JudgeRequest) -> js.Fault | None:
        if "JUNK" in request.prompt:
            return js.Fault.JUNK
        if "HANG" in request.prompt:
            return js.Fault.HANG
        attempts[request.prompt] += 1
        return {1: js.Fault.RATE_LIMIT, 2: js.Fault.SERVER_ERROR}.get(attempts[request.prompt])

    return rule


async def test_judge_storm_every_episode_labeled_or_failed_once(
    store: store_base.EpisodeStore, judge: Callable[..., Any]
) -> None:
    marks = {3: "JUNK", 11: "JUNK", 20: "HANG", 33: "HANG"}
    store.insert_many(make_episodes(48, marks=marks))
    server = await judge(
        scorer=js.keyword_scorer(), latency_ms=5, faults=js.Faults(rule=storm_rule(), retry_after_s=0.01)
    )
    grader = judge_grader(server)

    report = await labeling.label_batch(
        store, grader, agent_id=AGENT, timeout_s=0.3, max_retries=3, backoff_base_s=0.01, backoff_max_s=0.05
    )
    await grader.aclose()

    assert (report.graded, report.labeled, report.failed) == (48, 44, 4)
    assert report.retries >= 44 * 2
    by_query = {e.state.query: e for e in store.iter_episodes(store_base.EpisodeQuery(agent_id=AGENT))}
    for query, episode in by_query.items():
        labels = [label for label in episode.labels if label.grader == "judge"]
        assert len(labels) == 1, (query, labels)
        if "JUNK" in query:
            assert labels[0].error and "rather not put a number" in labels[0].error and not episode.labeled
        elif "HANG" in query:
            assert labels[0].error and "timed out" in labels[0].error and not episode.labeled
        else:
            assert labels[0].score == 0.5 and episode.reward == 0.5
    assert server.stats.outcomes["rate_limit"] == 44 and server.stats.outcomes["scored"] == 44

    requests_before = server.stats.requests
    again = await labeling.label_batch(store, judge_grader(server), agent_id=AGENT, retry_failed=False)
    assert (again.graded, again.skipped) == (0, 48)
    assert server.stats.requests == requests_before


async def test_a_judge_that_never_answers_stops_the_run_and_uses_no_try(
    store: store_base.EpisodeStore, judge: Callable[..., Any]
) -> None:
    """Down from the start: each run stops after ``OUTAGE_STOP_AFTER`` gradings and writes nothing,
    so more outage runs than ``MAX_FAILED_ATTEMPTS`` still leave every episode its tries."""
    store.insert_many(make_episodes(60))
    server = await judge(faults=js.Faults(server_error_first=10**9))
    for _ in range(labeling.MAX_FAILED_ATTEMPTS + 1):
        grader = judge_grader(server)
        report = await labeling.label_batch(store, grader, agent_id=AGENT, concurrency=4, max_retries=0)
        await grader.aclose()
        assert report.backend_down is not None and "500" in report.backend_down, report.backend_down
        assert labeling.OUTAGE_STOP_AFTER <= report.graded == report.failed < labeling.OUTAGE_STOP_AFTER + 4
        assert report.labeled == 0 and report.to_json_dict()["backendDown"] == report.backend_down
        assert all(labels == [] for labels in labels_by(store, "judge").values())

    server.faults = js.Faults()  # it answers again
    grader = judge_grader(server)
    report = await labeling.label_batch(store, grader, agent_id=AGENT, concurrency=4, max_retries=0)
    await grader.aclose()
    assert (report.labeled, report.failed, report.backend_down) == (60, 0, None)


async def test_a_short_run_against_a_dead_judge_writes_nothing(
    store: store_base.EpisodeStore, judge: Callable[..., Any]
) -> None:
    store.insert_many(make_episodes(5))
    server = await judge(faults=js.Faults(server_error_first=10**9))
    grader = judge_grader(server)
    report = await labeling.label_batch(store, grader, agent_id=AGENT, max_retries=0)
    await grader.aclose()
    assert (report.graded, report.failed, report.backend_down is not None) == (5, 5, True)
    assert all(labels == [] for labels in labels_by(store, "judge").values())


async def test_failures_before_the_judge_first_answers_are_written_once_it_does(
    store: store_base.EpisodeStore, judge: Callable[..., Any]
) -> None:
    """Three 500s, then answers: the three failures count (written as failed labels), as any
    failure after the first answer does."""
    store.insert_many(make_episodes(10))
    server = await judge(faults=js.Faults(server_error_first=3))
    grader = judge_grader(server)
    report = await labeling.label_batch(store, grader, agent_id=AGENT, concurrency=1, max_retries=0)
    await grader.aclose()
    assert (report.graded, report.labeled, report.failed, report.backend_down) == (10, 7, 3, None)
    labels = labels_by(store, "judge")
    failed = [ls for ls in labels.values() if ls and ls[0].error is not None]
    assert len(failed) == 3 and all(len(ls) == 1 and "500" in (ls[0].error or "") for ls in failed)
    assert all(len(ls) == 1 for ls in labels.values())


async def test_unreadable_replies_are_failures_not_crashes(
    store: store_base.EpisodeStore, judge: Callable[..., Any]
) -> None:
    store.insert_many(make_episodes(20))
    server = await judge(faults=js.Faults(junk_fraction=0.3, bad_body_fraction=0.2, seed=7))

    report = await labeling.label_batch(store, judge_grader(server), agent_id=AGENT, max_retries=0)

    assert report.graded == 20 and report.labeled + report.failed == 20
    assert report.failed == server.stats.outcomes["junk"] + server.stats.outcomes["bad_body"] > 0
    assert all(len(labels) == 1 for labels in labels_by(store, "judge").values())


@pytest.mark.parametrize("concurrency", [16, 4], ids=["default-16", "four"])
async def test_concurrency_is_bounded(
    store: store_base.EpisodeStore, judge: Callable[..., Any], concurrency: int
) -> None:
    store.insert_many(make_episodes(3 * concurrency))
    # A slow judge, so that every worker has its request in flight at once even on a busy machine.
    server = await judge(latency_ms=150)

    report = await labeling.label_batch(store, judge_grader(server), agent_id=AGENT, concurrency=concurrency)

    assert report.labeled == 3 * concurrency
    assert concurrency - 1 <= server.stats.max_in_flight <= concurrency


async def test_retry_after_is_honoured(store: store_base.EpisodeStore, judge: Callable[..., Any]) -> None:
    store.insert_many(make_episodes(1))
    server = await judge(faults=js.Faults(rate_limit_first=1, retry_after_s=0.4))

    started = time.perf_counter()
    report = await labeling.label_batch(store, judge_grader(server), agent_id=AGENT, backoff_base_s=0.01)

    assert report.labeled == 1 and report.retries == 1
    assert time.perf_counter() - started >= 0.4
    assert server.stats.requests == 2


async def test_azure_style_judge(
    store: store_base.EpisodeStore, judge: Callable[..., Any], monkeypatch: Any
) -> None:
    monkeypatch.setenv("LIGHTNING_TEST_JUDGE_KEY", "test-key")
    store.insert_many(make_episodes(5))
    paths: list[str | None] = []
    server = await judge(scorer=lambda request: paths.append(request.deployment) or 0.75)

    report = await labeling.label_batch(store, judge_grader(server, azure=True), agent_id=AGENT)

    assert report.labeled == 5 and report.mean_score == 0.75
    assert paths == ["judge-dep"] * 5


async def test_request_rate_limit_holds(store: store_base.EpisodeStore, judge: Callable[..., Any]) -> None:
    store.insert_many(make_episodes(30))
    server = await judge()

    started = time.perf_counter()
    report = await labeling.label_batch(store, judge_grader(server), agent_id=AGENT, requests_per_second=20)

    # The bucket holds 20 and starts full: 20 requests go at once, the other 10 take 0.5 s at 20/s.
    assert report.labeled == 30
    assert time.perf_counter() - started >= 0.45


async def test_token_bucket_waits_for_tokens_and_pauses() -> None:
    limiter = labeling.RateLimiter(tokens_per_minute=600)  # 10 tokens/s, a bucket of 600

    started = time.perf_counter()
    await limiter.acquire(600)
    assert time.perf_counter() - started < 0.2
    await limiter.acquire(3)
    assert time.perf_counter() - started >= 0.28

    limiter = labeling.RateLimiter(requests_per_second=1000)
    limiter.pause(0.2)
    started = time.perf_counter()
    await limiter.acquire()
    assert time.perf_counter() - started >= 0.19


@pytest.mark.parametrize(("rps", "tpm"), [(0, None), (None, -5)], ids=["zero-rps", "negative-tpm"])
def test_rate_limiter_refuses_nonsense(rps: float | None, tpm: float | None) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        labeling.RateLimiter(rps, tpm)


async def test_cancelling_a_batch_stops_it_promptly(
    store: store_base.EpisodeStore, judge: Callable[..., Any]
) -> None:
    store.insert_many(make_episodes(20))
    server = await judge(faults=js.Faults(hang_first=1000))
    batch = asyncio.ensure_future(
        labeling.label_batch(store, judge_grader(server), agent_id=AGENT, timeout_s=30)
    )
    await asyncio.sleep(0.3)

    started = time.perf_counter()
    batch.cancel()
    with pytest.raises(asyncio.CancelledError):
        await batch

    assert time.perf_counter() - started < 2
    assert store.count(AGENT, labeled=True) == 0


async def test_labels_graded_before_a_cancel_are_written(
    store: store_base.EpisodeStore, judge: Callable[..., Any]
) -> None:
    """An operator that stops (or a RewardLabeling deleted) cancels the run: the labels already
    graded, still in the write buffer (up to ``write_batch_size``), reach the store all the same."""
    store.insert_many(make_episodes(20, marks={i: "HANG" for i in range(12, 20)}))

    def rule(request: js.JudgeRequest) -> js.Fault | None:
        return js.Fault.HANG if "HANG" in request.prompt else None

    server = await judge(faults=js.Faults(rule=rule))
    batch = asyncio.ensure_future(
        labeling.label_batch(store, judge_grader(server), agent_id=AGENT, timeout_s=30, concurrency=4)
    )
    deadline = time.monotonic() + 10
    while server.stats.outcomes["scored"] < 12 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)
    batch.cancel()
    with pytest.raises(asyncio.CancelledError):
        await batch

    assert store.count(AGENT, labeled=True) == 12


# --- dry run and sample test ---------------------------------------------------------------------


async def test_dry_run_writes_nothing_and_samples_by_seed(store: store_base.EpisodeStore) -> None:
    store.insert_many(make_episodes(300))

    first = await labeling.dry_run(store, rule_grader(), AGENT, sample_size=100, seed=1)
    same = await labeling.dry_run(store, rule_grader(), AGENT, sample_size=100, seed=1)
    other = await labeling.dry_run(store, rule_grader(), AGENT, sample_size=100, seed=2)

    assert store.count(AGENT, labeled=True) == 0
    ids = [r.episode_id for r in first.records]
    assert len(set(ids)) == 100
    assert ids == [r.episode_id for r in same.records]
    assert ids != [r.episode_id for r in other.records]
    assert first.metrics.count == 100
    # two thirds of episodes call the right tool: too many perfect scores
    assert first.verdict.verdict is dryrun.VerdictLevel.NO_GO
    data = first.to_json_dict()
    assert {
        "mean",
        "std",
        "fractionAboveZero",
        "fractionPerfect",
        "verdict",
        "diagnosis",
        "count",
    } <= data.keys()


async def test_dry_run_over_the_judge_counts_failures(
    store: store_base.EpisodeStore, judge: Callable[..., Any]
) -> None:
    store.insert_many(make_episodes(40))
    server = await judge(faults=js.Faults(junk_fraction=0.5, seed=3))

    result = await labeling.dry_run(store, judge_grader(server), AGENT, sample_size=40, max_retries=0)

    assert result.metrics.count + result.metrics.failed == 40
    assert result.metrics.failed == server.stats.outcomes["junk"] > 0
    assert any(d.code is dryrun.DiagnosisCode.GRADER_ERRORS for d in result.verdict.diagnosis)
    assert store.count(AGENT, labeled=True) == 0


async def test_sample_test_grades_the_newest(store: store_base.EpisodeStore) -> None:
    episodes = make_episodes(12)
    store.insert_many(episodes)

    result = await labeling.sample_test(store, rule_grader(), AGENT, size=5)

    assert [r.episode_id for r in result.records] == [e.id for e in reversed(episodes[-5:])]
    scores = [r.score for r in result.records]
    assert result.average == pytest.approx(sum(s for s in scores if s is not None) / 5)
    assert store.count(AGENT, labeled=True) == 0


async def test_sample_test_with_a_hanging_judge_times_out(
    store: store_base.EpisodeStore, judge: Callable[..., Any]
) -> None:
    store.insert_many(make_episodes(3))
    server = await judge(faults=js.Faults(hang_first=100))

    started = time.perf_counter()
    result = await labeling.sample_test(
        store, judge_grader(server), AGENT, size=3, timeout_s=0.2, max_retries=0
    )

    assert time.perf_counter() - started < 2
    assert all(r.score is None and r.error and "timed out" in r.error for r in result.records)
    await asyncio.sleep(0)
