"""``POST /v1/episodes`` on a real collector process over a real SQLite store.

Covers: a batch replayed three times (as a JSON array, gzip, JSON Lines) is stored once and the
replays answer ``duplicate`` with the same ids; a mixed batch keeps its good items and rejects the
others with reasons naming the field, in input order; JSON Lines and arrays told apart by the body
whatever the Content-Type (JSON, none, curl's form type, text, the JSON Lines types), a bad line named
while the others are kept, other types still 415; an episode with no query, action or messages
refused alone; 1,000 generated malformed payloads (wrong types,
missing fields, oversize strings, invalid UTF-8, deep nesting, not JSON, wrong content type or
encoding, gzip garbage and bombs, oversize bodies, ...) each get a 4xx with a reason (or per-item
``rejected`` in a mixed batch) while the process keeps serving; ``/healthz``, ``/readyz`` and the
Prometheus counters; bearer-token auth from ``--token-file`` and from the environment (401 without
or with a wrong token, probes open).
"""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.collector_process import CollectorProcess

from lightning_op import store as store_mod
from lightning_op.store import base as store_base

MAX_BODY = 256 * 1024
JSON = {"Content-Type": "application/json"}
NDJSON = {"Content-Type": "application/x-ndjson"}


def good_episode(n: int, agent: str = "ingest-bot") -> dict[str, Any]:
    return {
        "agentId": agent,
        "sessionId": f"session-{n // 5}",
        "turn": n % 5,
        "timestamp": "2026-02-01T12:00:00Z",
        "modelVersion": "base-v1",
        "state": {"query": f"what is the status of order {n}?", "context": {"tier": "gold"}},
        "action": {"tool": "lookup_order", "arguments": {"order": n}},
        "result": {"status": "shipped"},
    }


@pytest.fixture(scope="module")
def store_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('ingest') / 'episodes.db'}"


@pytest.fixture(scope="module")
def collector(store_url: str) -> Iterator[CollectorProcess]:
    with CollectorProcess(store_url, "--max-body-bytes", str(MAX_BODY)) as proc:
        yield proc


@pytest.fixture(scope="module")
def http(collector: CollectorProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=collector.url, timeout=10.0) as client:
        yield client


def stored(store_url: str, agent: str) -> list[str]:
    store = store_mod.open_store(store_url)
    try:
        return sorted(e.id for e in store.iter_episodes(store_base.EpisodeQuery(agent_id=agent)))
    finally:
        store.close()


def post(http: httpx.Client, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return http.post("/v1/episodes", content=body, headers=headers)


def test_a_batch_replayed_three_times_is_stored_once(http: httpx.Client, store_url: str) -> None:
    batch = [good_episode(n, agent="replay-bot") for n in range(10)]
    raw = json.dumps(batch).encode()
    replays = [
        (raw, JSON),
        (gzip.compress(raw), {**JSON, "Content-Encoding": "gzip"}),
        ("\n".join(json.dumps(e) for e in batch).encode(), NDJSON),
    ]

    answers = [post(http, body, headers) for body, headers in replays]

    assert [a.status_code for a in answers] == [200, 200, 200]
    first, *later = (a.json() for a in answers)
    assert (first["accepted"], first["duplicates"], first["rejected"]) == (10, 0, 0)
    ids = [r["id"] for r in first["results"]]
    assert len(set(ids)) == 10
    for replay in later:
        assert (replay["accepted"], replay["duplicates"], replay["rejected"]) == (0, 10, 0)
        assert [r["id"] for r in replay["results"]] == ids
        assert {r["status"] for r in replay["results"]} == {"duplicate"}
    assert stored(store_url, "replay-bot") == sorted(ids)


def test_a_mixed_batch_keeps_the_good_items_and_says_why_the_others_failed(
    http: httpx.Client, store_url: str
) -> None:
    batch: list[Any] = [
        good_episode(0, agent="mixed-bot"),
        {**good_episode(1, agent="mixed-bot"), "turn": -3},
        good_episode(2, agent="mixed-bot"),
        "not an episode",
        {"state": {"query": "no agent"}},
        good_episode(3, agent="mixed-bot"),
    ]

    answer = post(http, json.dumps(batch).encode(), JSON)

    assert answer.status_code == 200
    body = answer.json()
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (3, 0, 3)
    assert [r["index"] for r in body["results"]] == list(range(6))
    assert [r["status"] for r in body["results"]] == [
        "accepted", "rejected", "accepted", "rejected", "rejected", "accepted"
    ]  # fmt: skip
    reasons = [r["reason"] for r in body["results"]]
    assert "turn" in reasons[1] and "greater than or equal to 0" in reasons[1]
    assert "JSON object" in reasons[3]
    assert "agentId" in reasons[4] and "required" in reasons[4].lower()
    accepted = sorted(r["id"] for r in body["results"] if r["status"] == "accepted")
    assert stored(store_url, "mixed-bot") == accepted


def test_a_batch_where_every_item_is_rejected_is_a_422_with_reasons(http: httpx.Client) -> None:
    answer = post(http, json.dumps([{"agentId": "bad agent"}, {"agentId": "x", "reward": 7}]).encode(), JSON)

    assert answer.status_code == 422
    results = answer.json()["results"]
    assert "agentId" in results[0]["reason"]
    assert "reward" in results[1]["reason"]


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(JSON, id="application-json"),
        pytest.param({}, id="no-content-type"),
        pytest.param({"Content-Type": "application/x-www-form-urlencoded"}, id="curl-data-binary"),
        pytest.param({"Content-Type": "text/plain; charset=utf-8"}, id="text-plain"),
        pytest.param({"Content-Type": "application/jsonlines"}, id="jsonlines"),
        pytest.param({"Content-Type": "application/json-lines"}, id="json-lines"),
        pytest.param(NDJSON, id="ndjson"),
    ],
)
def test_json_lines_and_arrays_are_told_apart_by_the_body_whatever_the_content_type(
    http: httpx.Client, store_url: str, headers: dict[str, str], request: pytest.FixtureRequest
) -> None:
    agent = f"sniff-{request.node.callspec.id}"
    episodes = [good_episode(n, agent=agent) for n in range(6)]
    lines = "\r\n".join(json.dumps(e) for e in episodes[:3]) + "\n\n"
    array = json.dumps(episodes[3:], indent=2)

    as_lines = post(http, lines.encode(), headers)
    as_array = post(http, array.encode(), headers)

    assert (as_lines.status_code, as_array.status_code) == (200, 200), (as_lines.text, as_array.text)
    assert as_lines.json()["accepted"] == 3 and as_array.json()["accepted"] == 3
    ids = [r["id"] for r in as_lines.json()["results"] + as_array.json()["results"]]
    assert stored(store_url, agent) == sorted(ids)


def test_json_lines_sent_as_json_keep_the_good_lines_and_name_the_bad_one(
    http: httpx.Client, store_url: str
) -> None:
    good = [json.dumps(good_episode(n, agent="sniff-bad-line")) for n in range(3)]
    body = "\n".join([good[0], good[1], '{"agentId": "sniff-bad-line", oops', good[2]]).encode()

    answer = post(http, body, JSON)

    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [r["status"] for r in results] == ["accepted", "accepted", "rejected", "accepted"]
    assert results[2]["reason"].startswith("line 3 is not valid JSON")
    assert len(stored(store_url, "sniff-bad-line")) == 3


def test_json_lines_sent_as_json_with_a_cut_first_line_keep_the_rest(
    http: httpx.Client, store_url: str
) -> None:
    """A first line cut short (a truncated log line) no longer loses the whole body to one 400."""
    good = [json.dumps(good_episode(n, agent="sniff-cut-first")) for n in range(2)]
    body = "\n".join(['{"agentId": "sniff-cut-first", "state": {"que', *good]).encode()

    answer = post(http, body, JSON)

    assert answer.status_code == 200, answer.text
    assert [r["status"] for r in answer.json()["results"]] == ["rejected", "accepted", "accepted"]
    assert answer.json()["results"][0]["reason"].startswith("line 1 is not valid JSON")
    assert len(stored(store_url, "sniff-cut-first")) == 2


def test_other_content_types_are_still_refused_with_415(http: httpx.Client) -> None:
    body = json.dumps([good_episode(0, agent="sniff-refused")]).encode()
    for content_type in ("application/xml", "multipart/form-data; boundary=x", "image/png"):
        answer = post(http, body, {"Content-Type": content_type})
        assert answer.status_code == 415, content_type
        assert "application/x-ndjson" in answer.json()["error"]


def test_an_episode_with_no_content_is_refused_and_the_rest_of_the_batch_kept(
    http: httpx.Client, store_url: str
) -> None:
    empty = {"agentId": "empty-bot", "sessionId": "nothing", "turn": 0, "timestamp": "2026-02-01T14:00:00Z"}
    batch = [
        good_episode(0, agent="empty-bot"),
        empty,
        {**empty, "sessionId": "blank", "state": {"query": "", "context": {"k": 1}}, "messages": []},
        {**empty, "sessionId": "chat", "messages": [{"role": "user", "content": "hi"}]},
        {**empty, "sessionId": "tool", "action": {"tool": "lookup_order", "arguments": {}}},
    ]

    answer = post(http, json.dumps(batch).encode(), JSON)
    alone = post(http, json.dumps(empty).encode(), JSON)

    assert answer.status_code == 200
    results = answer.json()["results"]
    assert [r["status"] for r in results] == ["accepted", "rejected", "rejected", "accepted", "accepted"]
    for result in results[1:3]:
        assert result["reason"] == "episode has no content: give state.query, action or messages"
    assert alone.status_code == 422
    assert "no content" in alone.json()["results"][0]["reason"]
    assert stored(store_url, "empty-bot") == sorted(r["id"] for r in results if r["status"] == "accepted")


# --- 1,000 malformed payloads ----------------------------------------------------------------------


@dataclass
class Case:
    name: str
    body: bytes
    headers: dict[str, str]
    # For mixed batches: how many items are good (they must be accepted).
    good: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"k": [value]}
    return value


# Values that are invalid for the field whatever else the episode holds.
BAD_VALUES: dict[str, list[Any]] = {
    "agentId": [None, 5, "", "has space", "slash/agent", "x" * 300, ["a"], {"a": 1}, True],
    "id": ["bad id!", 7, "x" * 300, "", ["id"], "tab\tid"],
    "sessionId": [12, "s" * 300, ["s"], {"s": 1}],
    "turn": [-1, "three", 10**9, 1.5, [1], {"t": 1}],
    "timestamp": ["yesterday", [2026], {"y": 2026}, "2026-13-45T99:00:00Z", True],
    "modelVersion": [5, "m" * 300, ["m"]],
    "reward": [1.5, -0.1, "high", [0.5], {"r": 1}],
    "labeled": ["maybe", [True], {"l": 1}],
    "state": [
        "just text",
        5,
        {"query": 5},
        {"query": "q" * 40_000},
        {"unknown": 1},
        {"query": "q", "context": nested(20)},
        {"query": ["list"]},
    ],
    "action": [
        "call",
        {},
        {"tool": ""},
        {"tool": 5},
        {"tool": "t" * 300},
        {"tool": "t", "arguments": nested(20)},
        {"arguments": {}},
        {"tool": "t", "extra": 1},
    ],
    "messages": [
        "hello",
        [{"role": "robot", "content": "x"}],
        [{"role": "user", "content": 5}],
        [{"content": "no role"}],
        [{"role": "user", "content": "x"}] * 200,
        [{"role": "assistant", "tool_calls": [{"function": {"arguments": "{}"}}]}],
        [5],
    ],
    "labels": [[{"grader": "g"}], "x", [{"score": 2, "grader": "g"}], [{"score": 0.5}], [5]],
    "error": [5, "e" * 40_000, ["e"]],
    "result": [nested(20), {"blob": "r" * 300_000}],
    "redactions": [{"email": "x"}, "x", [1]],
    "revision": [-1, "x"],
    "unknownField": [1, "x", None],
}


def malformed_cases(seed: int = 7) -> list[Case]:
    rng = random.Random(seed)
    good_body = json.dumps([good_episode(n, agent="fuzz-good") for n in range(3)]).encode()
    cases: list[Case] = []

    def episode_with_mutations(n: int, small: bool = False) -> dict[str, Any]:
        episode = good_episode(n, agent="fuzz-bad")
        for name in rng.sample(sorted(BAD_VALUES), rng.randint(1, 3)):
            values = BAD_VALUES[name]
            if small:  # a mixed batch must fit in the body limit, so that its good items are judged
                values = [v for v in values if len(json.dumps(v)) < 50_000]
            episode[name] = rng.choice(values)
        return episode

    # Every single wrong value, in each transport.
    for name, values in BAD_VALUES.items():
        for value in values:
            episode = {**good_episode(0, agent="fuzz-bad"), name: value}
            raw = json.dumps(episode).encode()
            cases.append(Case(f"{name}-array", b"[" + raw + b"]", JSON))
            cases.append(Case(f"{name}-object", raw, JSON))
            cases.append(Case(f"{name}-jsonl", raw + b"\n", NDJSON))
            cases.append(
                Case(f"{name}-gzip", gzip.compress(b"[" + raw + b"]"), {**JSON, "Content-Encoding": "gzip"})
            )
    for missing in ("agentId",):
        episode = good_episode(0, agent="fuzz-bad")
        del episode[missing]
        cases.append(Case(f"missing-{missing}", json.dumps([episode]).encode(), JSON))
    cases.append(Case("empty-object", b"[{}]", JSON))

    # Whole bodies that are not a batch of episodes.
    fixed: list[tuple[str, bytes, dict[str, str]]] = [
        ("empty", b"", JSON),
        ("whitespace", b"   \n", JSON),
        ("null", b"null", JSON),
        ("number", b"42", JSON),
        ("string", b'"episodes"', JSON),
        ("bool", b"true", JSON),
        ("open-bracket", b"[", JSON),
        ("trailing-comma", b'[{"agentId":"a"},]', JSON),
        ("single-quotes", b"[{'agentId':'a'}]", JSON),
        ("lone-surrogate", b'[{"agentId":"a","state":{"query":"\\ud800"}}]', JSON),
        ("bad-utf8", b'[{"agentId":"a","state":{"query":"\xff\xfe"}}]', JSON),
        ("overlong-utf8", b'[{"agentId":"a","state":{"query":"\xc0\xaf"}}]', JSON),
        ("latin1-charset", good_body, {"Content-Type": "application/json; charset=latin-1"}),
        ("no-content-type-not-json", b"<episodes/>", {}),
        ("text-plain-not-json", b"episodes: 3", {"Content-Type": "text/plain"}),
        ("form-not-json", b"agentId=a&turn=0", {"Content-Type": "application/x-www-form-urlencoded"}),
        ("two-broken-lines-as-json", b"{oops\n[1, 2", JSON),
        ("xml", b"<episodes/>", {"Content-Type": "application/xml"}),
        ("form", b"agentId=a", {"Content-Type": "application/x-www-form-urlencoded"}),
        ("multipart", good_body, {"Content-Type": "multipart/form-data; boundary=x"}),
        ("brotli", good_body, {**JSON, "Content-Encoding": "br"}),
        ("deflate", good_body, {**JSON, "Content-Encoding": "deflate"}),
        ("gzip-not-gzipped", good_body, {**JSON, "Content-Encoding": "gzip"}),
        ("gzip-truncated", gzip.compress(good_body)[:-12], {**JSON, "Content-Encoding": "gzip"}),
        ("gzip-of-garbage", gzip.compress(b"\x00garbage"), {**JSON, "Content-Encoding": "gzip"}),
        ("gzip-two-members", gzip.compress(good_body) * 2, {**JSON, "Content-Encoding": "gzip"}),
        (
            "gzip-bomb",
            gzip.compress(b"[" + b" " * (64 * MAX_BODY) + b"]"),
            {**JSON, "Content-Encoding": "gzip"},
        ),
        ("oversize-body", b"[" + b" " * MAX_BODY + b"]", JSON),
        ("oversize-jsonl", b"\n" * (MAX_BODY + 1), NDJSON),
        ("deep-array", b"[" * 5000 + b"]" * 5000, JSON),
        ("deep-object", b'{"a":' * 3000 + b"1" + b"}" * 3000, JSON),
        ("array-of-numbers", b"[1, 2, 3]", JSON),
        ("array-of-arrays", b"[[{}]]", JSON),
        ("jsonl-garbage", b"not json\n{also not\n", NDJSON),
        ("nan-reward", b'[{"agentId":"a","reward":NaN}]', JSON),
        ("infinite-context", b'[{"agentId":"a","state":{"context":Infinity}}]', JSON),
    ]
    cases.extend(Case(name, body, headers) for name, body, headers in fixed)

    # Randomised: invalid UTF-8, truncation and garbage in otherwise good bodies.
    for i in range(60):
        body = bytearray(good_body)
        body[rng.randrange(1, len(body) - 1)] = rng.choice([0xFF, 0xFE, 0xC0, 0x80, 0xED])
        cases.append(Case(f"utf8-{i}", bytes(body), JSON))
    for i in range(60):
        cases.append(Case(f"truncated-{i}", good_body[: rng.randrange(0, len(good_body) - 1)], JSON))
    for i in range(60):
        garbage = bytes(rng.randrange(32, 127) for _ in range(rng.randrange(1, 200)))
        if garbage.strip()[:1] in (b"[", b"{") or garbage.strip().isdigit():
            garbage = b"@" + garbage
        cases.append(Case(f"garbage-{i}", garbage, JSON))
    for i in range(40):
        junk = bytes([0x1F, 0x8B]) + rng.randbytes(rng.randrange(0, 300))
        cases.append(Case(f"gzip-junk-{i}", junk, {**JSON, "Content-Encoding": "gzip"}))

    # Randomised episodes with one to three wrong fields; some in mixed batches with good ones.
    n = 0
    while len(cases) < 1000:
        n += 1
        if n % 4 == 0:
            good = [good_episode(1000 + n * 10 + k, agent="fuzz-good") for k in range(2)]
            items = [good[0], episode_with_mutations(n, small=True), good[1]]
            cases.append(Case(f"mixed-{n}", json.dumps(items).encode(), JSON, good=2))
        else:
            cases.append(Case(f"random-{n}", json.dumps([episode_with_mutations(n)]).encode(), JSON))
    return cases


def test_1000_malformed_payloads_get_4xx_with_reasons_and_the_collector_keeps_serving(
    collector: CollectorProcess, http: httpx.Client, store_url: str
) -> None:
    cases = malformed_cases()
    assert len(cases) >= 1000
    before = set(stored(store_url, "fuzz-good"))
    accepted_good: set[str] = set()
    failures = []

    for case in cases:
        answer = post(http, case.body, case.headers)
        body = answer.json()
        if case.good:
            statuses = [r["status"] for r in body.get("results", [])]
            ok = answer.status_code == 200 and statuses == ["accepted", "rejected", "accepted"]
            ok = ok and bool(body["results"][1]["reason"])
            accepted_good.update(r["id"] for r in body.get("results", []) if r["status"] == "accepted")
        elif "results" in body:
            ok = 400 <= answer.status_code < 500 and all(
                r["status"] == "rejected" and r["reason"] for r in body["results"]
            )
        else:
            ok = 400 <= answer.status_code < 500 and bool(body.get("error"))
        if not ok:
            failures.append(f"{case.name}: {answer.status_code} {answer.text[:200]}")

    assert not failures, f"{len(failures)} payloads were not refused properly:\n" + "\n".join(failures[:20])
    assert collector.proc.poll() is None
    assert http.get("/healthz").status_code == 200
    last = post(http, json.dumps([good_episode(9999, agent="fuzz-good")]).encode(), JSON)
    assert last.status_code == 200 and last.json()["accepted"] == 1
    accepted_good.add(last.json()["results"][0]["id"])
    assert set(stored(store_url, "fuzz-good")) - before == accepted_good
    assert stored(store_url, "fuzz-bad") == []


def test_probes_and_metrics_report_what_happened(http: httpx.Client) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    post(http, json.dumps([good_episode(1, agent="metrics-bot"), {"agentId": "bad agent"}]).encode(), JSON)
    post(http, b"nope", {"Content-Type": "application/xml"})

    metrics = http.get("/metrics")

    assert metrics.status_code == 200
    samples = parse_metrics(metrics.text)
    assert samples["lightning_collector_episodes_accepted_total"] >= 1
    assert samples['lightning_collector_episodes_rejected_total{reason="string_pattern_mismatch"}'] >= 1
    assert samples['lightning_collector_requests_total{route="/v1/episodes",status="415"}'] >= 1
    assert samples['lightning_collector_requests_total{route="/v1/episodes",status="200"}'] >= 1
    assert samples["lightning_collector_batch_seconds_count"] >= 1
    assert samples["lightning_collector_commit_seconds_count"] >= 1
    assert "lightning_collector_queue_depth" in samples


def parse_metrics(text: str) -> dict[str, float]:
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


# --- auth ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["token-file", "env"])
def test_a_token_guards_ingest_and_leaves_probes_open(tmp_path: Path, source: str) -> None:
    token = "tok-" + "a1b2c3d4" * 4
    args: list[str] = []
    env: dict[str, str] = {}
    if source == "token-file":
        (tmp_path / "token").write_text(token + "\n")
        args = ["--token-file", str(tmp_path / "token")]
    else:
        env = {"LIGHTNING_COLLECTOR_TOKEN": token}
    store_url = f"sqlite:///{tmp_path / 'episodes.db'}"
    body = json.dumps([good_episode(1, agent="auth-bot")]).encode()

    with CollectorProcess(store_url, *args, env=env) as proc, httpx.Client(base_url=proc.url) as http:
        missing = post(http, body, JSON)
        wrong = post(http, body, {**JSON, "Authorization": "Bearer not-the-token"})
        basic = post(http, body, {**JSON, "Authorization": f"Basic {token}"})
        right = post(http, body, {**JSON, "Authorization": f"Bearer {token}"})
        probes = [http.get(path).status_code for path in ("/healthz", "/readyz", "/metrics")]

    assert [missing.status_code, wrong.status_code, basic.status_code] == [401, 401, 401]
    assert "bearer token" in missing.json()["error"]
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert right.status_code == 200 and right.json()["accepted"] == 1
    assert probes == [200, 200, 200]
    assert len(stored(store_url, "auth-bot")) == 1
    assert token not in proc.log


def test_an_empty_token_file_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("\n")
    proc = CollectorProcess(f"sqlite:///{tmp_path / 'e.db'}", "--token-file", str(tmp_path / "token"))
    with pytest.raises(RuntimeError, match="did not start"):
        proc.start(timeout=20)
    assert proc.proc.returncode == 1
    assert "token-file" in proc.log and "is empty" in proc.log
