"""The trainer's evaluation with an LLM judge that is down: no score, rather than a score of 0.

``evaluate.score_replies`` grades with a real ``score_model`` grader over HTTP against
``testing.judge_server``. A judge that fails every request with errors that may pass (HTTP 500,
429) is tried ``GRADE_ATTEMPTS`` times per example and then raises ``EvaluationUnavailable``
naming the judge's error, so a round is not judged a regression because the judge was down; a
judge that fails only for a while is retried and the examples are scored; a judge that answers
junk is the grader's failure, counted 0 as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from lightning_op import graders
from lightning_op.testing import judge_server as js
from lightning_op.training import evaluate

ROW = {
    "messages": [
        {"role": "user", "content": "who will churn?"},
        {"role": "assistant", "content": "Customers with falling usage."},
    ]
}


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(evaluate, "RETRY_BASE_S", 0.01)


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[Any] = []

    def start(**kwargs: Any) -> tuple[js.JudgeServer, str]:
        server = js.JudgeServer(**kwargs)
        context = server.in_thread()
        servers.append(context)
        return server, context.__enter__()

    yield start
    for context in servers:
        context.__exit__(None, None, None)


def _grader(base_url: str) -> Any:
    return graders.build_grader(
        graders.load_grader_spec(
            {
                "type": "score_model",
                "name": "judge",
                "model": "judge-test",
                "base_url": base_url,
                "input": [{"role": "user", "content": "Reply: {{sample.output_text}}"}],
                "timeout_s": 5,
            }
        )
    )


def _score(base_url: str, replies: list[str]) -> evaluate.EvalResult:
    grader = _grader(base_url)
    try:
        return evaluate.score_replies([ROW] * len(replies), replies, grader)
    finally:
        asyncio.run(grader.aclose())


def test_a_judge_that_is_down_gives_no_score(serve: Any) -> None:
    server, url = serve(faults=js.Faults(server_error_first=10_000))
    with pytest.raises(evaluate.EvaluationUnavailable) as raised:
        _score(url, ["one", "two", "three"])
    message = str(raised.value)
    assert "failed on all 3 examples" in message and "HTTP 500" in message
    assert server.stats.requests == 3 * evaluate.GRADE_ATTEMPTS


def test_a_judge_that_fails_for_a_while_is_retried_and_scores(serve: Any) -> None:
    server, url = serve(faults=js.Faults(server_error_first=2, rate_limit_first=2, retry_after_s=0.01))
    result = _score(url, ["one", "two", "three"])
    assert all(e.score is not None and e.error is None for e in result.per_example)
    assert server.stats.outcomes["scored"] == 3


def test_a_judge_that_answers_junk_counts_zero_as_before(serve: Any) -> None:
    _, url = serve(faults=js.Faults(junk_first=10_000))
    result = _score(url, ["one", "two"])
    assert result.score == 0.0
    assert all(e.error and "unparsable judge reply" in e.error for e in result.per_example)
