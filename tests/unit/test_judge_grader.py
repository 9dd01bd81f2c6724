"""LLM-as-judge graders (``score_model``, ``label_model``) over real HTTP with the real openai SDK.

The judge is ``lightning_op.testing.judge_server.JudgeServer`` on localhost. Covers:
- a score in the spec's range is normalised to [0, 1]; the request carries the rendered rubric, the
  format line, the model and temperature 0; label_model maps passing labels to 1;
- replies are parsed robustly (JSON, fenced JSON, bare numbers, "Score: 7/10", markdown, <think>
  text, label words) and unreadable ones become failed gradings, never exceptions;
- 429 (with Retry-After), 500, timeouts and refused connections are retryable failures; 404 and
  junk are not; a storm of faults over many episodes leaves every episode scored or failed, once;
- Azure OpenAI (deployment + api-version) and the task_adherence preset's environment variables;
- a judge with no endpoint or key is refused when built, unless a client factory is injected.
"""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest

from lightning_op import graders
from lightning_op.api import episode as ep
from lightning_op.graders import judge
from lightning_op.testing import judge_server as js

SCORE_MODEL: dict[str, Any] = {
    "type": "score_model",
    "name": "judge",
    "model": "judge-model",
    "input": [
        {"role": "system", "content": "You grade tool-using agents."},
        {"role": "user", "content": "Query: {{episode.state.query}}\nTool: {{episode.action.tool}}"},
    ],
    "range": [0, 10],
    "timeout_s": 5,
}
LABEL_MODEL: dict[str, Any] = {
    "type": "label_model",
    "name": "verdict",
    "model": "judge-model",
    "input": [{"role": "user", "content": "Was {{episode.action.tool}} right for: {{episode.state.query}}?"}],
    "labels": ["correct", "partly", "incorrect"],
    "passing_labels": ["correct"],
    "timeout_s": 5,
}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "LIGHTNING_JUDGE_BASE_URL", "LIGHTNING_JUDGE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("LIGHTNING_JUDGE_MODEL", raising=False)


def make_episode(i: int = 0, tool: str = "get_weather") -> ep.Episode:
    return ep.Episode.model_validate(
        {
            "agentId": "agent",
            "state": {"query": f"weather in city {i}?"},
            "action": {"tool": tool, "arguments": {}},
        }
    )


async def grade_with(
    spec_data: dict[str, Any], server: js.JudgeServer, episodes: list[ep.Episode]
) -> list[graders.GradeResult]:
    base_url = await server.start()
    grader = graders.build_grader(graders.load_grader_spec({**spec_data, "base_url": base_url}))
    try:
        return list(await asyncio.gather(*(grader.grade(e) for e in episodes)))
    finally:
        await grader.aclose()
        await server.stop()


async def test_score_model_normalises_the_range_and_sends_a_deterministic_request() -> None:
    seen: list[js.JudgeRequest] = []

    def scorer(request: js.JudgeRequest) -> float:
        seen.append(request)
        return 0.75

    [result] = await grade_with(SCORE_MODEL, js.JudgeServer(scorer=scorer), [make_episode(3)])
    assert result.ok and result.score == pytest.approx(0.75), result
    assert "judge score 7.5 in [0, 10]" in result.reason
    body = seen[0].body
    assert body["model"] == "judge-model" and body["temperature"] == 0
    assert "Query: weather in city 3?\nTool: get_weather" in seen[0].prompt
    assert '{"score": <a number from 0 to 10>' in seen[0].prompt
    assert seen[0].headers.get("Authorization") == "Bearer not-needed"


@pytest.mark.parametrize(
    ("score", "expected"), [(0.0, 1.0), (0.5, 0.0), (0.99, 0.0)], ids=["first", "mid", "last"]
)
async def test_label_model_scores_passing_labels(score: float, expected: float) -> None:
    [result] = await grade_with(LABEL_MODEL, js.JudgeServer(scorer=lambda _: score), [make_episode()])
    assert result.ok and result.score == expected, result


REPLIES = [
    ('{"score": 8, "reason": "good"}', 0.8, "good"),
    ('```json\n{"score": 6, "reasoning": "fine"}\n```', 0.6, "fine"),
    ("7", 0.7, ""),
    ("Score: 7/10 - right tool, arguments fine.", 0.7, ""),
    ("**Rating:** 9\nThe agent did well.", 0.9, ""),
    ('<think>maybe 2 or 3?</think>\n{"score": 4}', 0.4, ""),
    ("I would rate this 4 out of 5.", 0.8, ""),
    ('Here you go: {"rating": "5", "explanation": "ok"} thanks', 0.5, "ok"),
]


@pytest.mark.parametrize(("reply", "expected", "reason"), REPLIES, ids=[r[:30] for r, _, _ in REPLIES])
async def test_replies_are_parsed_robustly(reply: str, expected: float, reason: str) -> None:
    [result] = await grade_with(SCORE_MODEL, js.JudgeServer(scorer=lambda _: reply), [make_episode()])
    assert result.ok and result.score == pytest.approx(expected), result
    assert reason in result.reason


UNPARSABLE = [
    ("I'd rather not say; it depends on 3 things and 2 others.", "no score in reply"),
    ('{"score": 12}', "score 12 is outside the range [0, 10]"),
    ('{"verdict": "great"}', "no score in reply"),
    ("", "judge reply is empty"),
]


@pytest.mark.parametrize(
    ("reply", "error"), UNPARSABLE, ids=["prose", "out-of-range", "no-score-key", "empty"]
)
async def test_unparsable_replies_are_recorded_failures(reply: str, error: str) -> None:
    [result] = await grade_with(SCORE_MODEL, js.JudgeServer(scorer=lambda _: reply), [make_episode()])
    assert result.score is None and not result.retryable
    assert error in (result.error or "")


@pytest.mark.parametrize(
    ("faults", "retryable", "retry_after", "error"),
    [
        (js.Faults(rate_limit_first=1, retry_after_s=2.0), True, 2.0, "HTTP 429"),
        (js.Faults(rate_limit_first=1, retry_after_s=None), True, None, "HTTP 429"),
        (js.Faults(server_error_first=1), True, None, "HTTP 500"),
        (js.Faults(hang_first=1, hang_s=5.0), True, None, "timed out after 0.3s"),
        (js.Faults(junk_first=1), False, None, "unparsable judge reply"),
        (js.Faults(bad_body_first=1), False, None, "sent a body that is not JSON"),
    ],
    ids=["429-retry-after", "429-bare", "500", "timeout", "junk", "bad-body"],
)
async def test_http_failures_map_to_retryable_results(
    faults: js.Faults, retryable: bool, retry_after: float | None, error: str
) -> None:
    spec_data = {**SCORE_MODEL, "timeout_s": 0.3}
    [result] = await grade_with(spec_data, js.JudgeServer(faults=faults), [make_episode()])
    assert result.score is None, result
    assert (result.retryable, result.retry_after) == (retryable, retry_after)
    assert error in (result.error or "")


async def test_refused_connections_are_retryable_and_404_is_not(unused_tcp_port: int) -> None:
    grader = graders.build_grader(
        graders.load_grader_spec({**SCORE_MODEL, "base_url": f"http://127.0.0.1:{unused_tcp_port}/v1"})
    )
    result = await grader.grade(make_episode())
    await grader.aclose()
    assert result.score is None and result.retryable and "cannot reach judge" in (result.error or "")

    server = js.JudgeServer()
    await server.start()
    grader = graders.build_grader(
        graders.load_grader_spec({**SCORE_MODEL, "base_url": server.root_url + "/nope"})
    )
    try:
        result = await grader.grade(make_episode())
    finally:
        await grader.aclose()
        await server.stop()
    assert result.score is None and not result.retryable and "HTTP 404" in (result.error or "")


async def test_a_fault_storm_leaves_every_episode_scored_or_failed_once() -> None:
    faults = js.Faults(rate_limit_fraction=0.3, server_error_fraction=0.1, junk_fraction=0.1, seed=3)
    server = js.JudgeServer(latency_ms=5, faults=faults)
    episodes = [make_episode(i) for i in range(60)]
    results = await grade_with(SCORE_MODEL, server, episodes)
    assert len(results) == 60 and server.stats.requests == 60
    scored = [r for r in results if r.ok]
    retryable = [r for r in results if r.retryable]
    unparsable = [r for r in results if r.error and "unparsable" in r.error]
    assert len(scored) + len(retryable) + len(unparsable) == 60
    assert scored and retryable and unparsable
    assert all(r.retry_after is not None for r in retryable if "429" in (r.error or ""))


async def test_azure_openai_deployment_and_api_version(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[js.JudgeRequest] = []

    def scorer(request: js.JudgeRequest) -> float:
        seen.append(request)
        return 1.0

    server = js.JudgeServer(scorer=scorer)
    await server.start()
    monkeypatch.setenv("AZ_ENDPOINT", server.root_url)
    monkeypatch.setenv("AZ_KEY", "azure-secret")
    spec_data = {
        **SCORE_MODEL,
        "api_key_env": "AZ_KEY",
        "azure": {"endpoint_env": "AZ_ENDPOINT", "deployment": "judge-dep", "api_version": "2024-10-21"},
    }
    grader = graders.build_grader(graders.load_grader_spec(spec_data))
    try:
        result = await grader.grade(make_episode())
    finally:
        await grader.aclose()
        await server.stop()
    assert result.ok and result.score == 1.0, result
    assert seen[0].deployment == "judge-dep"
    headers = {k.lower(): v for k, v in seen[0].headers.items()}
    assert headers.get("api-key") == "azure-secret"


async def test_task_adherence_preset_reads_its_endpoint_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(graders.GraderBuildError, match="LIGHTNING_JUDGE_API_KEY"):
        graders.build_grader(graders.load_grader_spec("task_adherence"))
    seen: list[js.JudgeRequest] = []

    def scorer(request: js.JudgeRequest) -> float:
        seen.append(request)
        return 0.9

    server = js.JudgeServer(scorer=scorer)
    monkeypatch.setenv("LIGHTNING_JUDGE_BASE_URL", await server.start())
    monkeypatch.setenv("LIGHTNING_JUDGE_MODEL", "local-judge")
    grader = graders.build_grader(graders.load_grader_spec("task_adherence"))
    try:
        result = await grader.grade(make_episode())
    finally:
        await grader.aclose()
        await server.stop()
    assert result.ok and result.score == pytest.approx(0.9), result
    assert seen[0].model == "local-judge"
    assert "User request:\nweather in city 0?" in seen[0].prompt


async def test_an_injected_client_factory_is_used() -> None:
    server = js.JudgeServer(scorer=lambda _: 0.5)
    base_url = await server.start()
    endpoints: list[judge.JudgeEndpoint] = []

    def factory(endpoint: judge.JudgeEndpoint) -> openai.AsyncOpenAI:
        endpoints.append(endpoint)
        return openai.AsyncOpenAI(base_url=base_url, api_key="injected", max_retries=0)

    grader = graders.build_grader(graders.load_grader_spec("task_adherence"), judge_client_factory=factory)
    try:
        results = [await grader.grade(make_episode(i)) for i in range(3)]
    finally:
        await grader.aclose()
        await server.stop()
    assert all(r.ok for r in results) and len(endpoints) == 1
    assert endpoints[0].model == "gpt-4o-mini"


@pytest.mark.parametrize(
    ("reply", "labels", "expected"),
    [
        ('{"label": "Correct", "reason": "x"}', ["correct", "incorrect"], "correct"),
        ("incorrect", ["correct", "incorrect"], "incorrect"),
        ("Label: partly", ["correct", "partly", "incorrect"], "partly"),
        ("The call was **correct** given the query.", ["correct", "incorrect"], "correct"),
    ],
    ids=["json", "bare", "prefixed", "in-prose"],
)
def test_label_replies_parse(reply: str, labels: list[str], expected: str) -> None:
    assert judge.parse_label_reply(reply, labels)[0] == expected


@pytest.mark.parametrize(
    "reply",
    ['{"label": "great"}', "correct or incorrect, hard to say", "no idea"],
    ids=["unknown-label", "ambiguous", "none"],
)
def test_bad_label_replies_raise_parse_errors(reply: str) -> None:
    with pytest.raises(judge.ReplyParseError):
        judge.parse_label_reply(reply, ["correct", "incorrect"])


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after": "3"}, 3.0),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
    ids=["ms", "seconds", "past-date", "junk", "none"],
)
def test_retry_after_headers(headers: dict[str, str], expected: float | None) -> None:
    assert judge.retry_after_seconds(headers) == expected


@pytest.fixture
def unused_tcp_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
