"""Redaction (``store/redaction.py``): what is replaced, what is left alone, and that nothing raw is stored.

Covers: each builtin detector on values it must catch and look-alikes it must leave (years, dates,
times, order numbers, millisecond timestamps, version strings, C++ scopes, prose), the Luhn check
(a card number with a wrong check digit stays), ``ipaddress`` confirmation of IP candidates, secrets
in ``key=value`` text and under secret-named JSON keys; custom patterns counted as ``custom``;
configuration errors (unknown builtin, invalid or empty-matching regex) naming the culprit; every
place in an episode that can hold text (query, context values and keys, action arguments, message
content, tool-call arguments even behind a JSON escape, result, error, label reasons) redacted with
counts added to existing ones, the input left untouched and a second pass changing nothing; an API
key right after a character JSON escapes (newline, tab, control) in a JSON field; and,
end to end, planted PII never appearing in the bytes of the SQLite database or its WAL file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from lightning_op.api import episode as ep
from lightning_op.store import base as store_base
from lightning_op.store import redaction, sqlite

REDACTOR = redaction.Redactor.default()
T0 = datetime(2026, 2, 1, tzinfo=UTC)


def redact(text: str) -> tuple[str, dict[str, int]]:
    counts: dict[str, int] = {}
    return REDACTOR.redact_text(text, counts), counts


# --- each detector ---------------------------------------------------------------------------------

CAUGHT = [
    ("email", "mail alice.smith+tag@example.co.uk today", "alice.smith+tag@example.co.uk"),
    ("email", "From: Bob <bob_99@mail.example.org>", "bob_99@mail.example.org"),
    ("phone", "call +44 20 7946 0958 now", "+44 20 7946 0958"),
    ("phone", "whatsapp +919876543210", "+919876543210"),
    ("phone", "call +1 (555) 123-4567.", "+1 (555) 123-4567"),
    ("phone", "office (555) 123-4567", "(555) 123-4567"),
    ("phone", "cell 555-123-4567", "555-123-4567"),
    ("phone", "cell 555.123.4567", "555.123.4567"),
    ("phone", "toll free 1-800-555-0199", "1-800-555-0199"),
    ("credit_card", "card 4111 1111 1111 1111 exp 12/29", "4111 1111 1111 1111"),
    ("credit_card", "card 5500-0000-0000-0004", "5500-0000-0000-0004"),
    ("credit_card", "amex 378282246310005", "378282246310005"),
    ("ipv4", "client 192.168.1.10:8080 connected", "192.168.1.10"),
    ("ipv4", "from 8.8.8.8.", "8.8.8.8"),
    ("ipv6", "client 2001:db8::8a2e:370:7334 connected", "2001:db8::8a2e:370:7334"),
    ("ipv6", "loopback [::1]:80", "::1"),
    ("ipv6", "mapped ::ffff:192.0.2.128 here", "::ffff:192.0.2.128"),
    ("bearer", "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.abc123", "eyJhbGciOiJIUzI1NiJ9.e30.abc123"),
    ("bearer", "bearer AbCdEfGhIjKlMnOp", "AbCdEfGhIjKlMnOp"),
    ("api_key", "OPENAI key sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8t", "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8t"),
    ("api_key", "aws AKIAIOSFODNN7EXAMPLE here", "AKIAIOSFODNN7EXAMPLE"),
    (
        "api_key",
        "token ghp_16C7e42F292c6912E7710c838347Ae178B4a ok",
        "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
    ),
    ("api_key", "slack xoxb-2048-1234567890-AbCdEfGh", "xoxb-2048-1234567890-AbCdEfGh"),
    ("api_key", "stripe sk_live_4eC39HqLyjWDarjtT1zdp7dc", "sk_live_4eC39HqLyjWDarjtT1zdp7dc"),
    ("api_key", "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "wJalrXUtnFEMI/K7MDENG"),
    ("api_key", '{"api_key": "Zx81kLmQ02pRt7Yw"}', "Zx81kLmQ02pRt7Yw"),
    ("api_key", "db password=hunter2 please", "hunter2"),
    ("api_key", "clientSecret: 9f8e7d6c5b4a3f2e1d0c", "9f8e7d6c5b4a3f2e1d0c"),
]


@pytest.mark.parametrize(
    ("kind", "text", "secret"), CAUGHT, ids=[f"{c[0]}-{i}" for i, c in enumerate(CAUGHT)]
)
def test_detector_replaces_the_value_with_a_placeholder(kind: str, text: str, secret: str) -> None:
    new, counts = redact(text)
    assert secret not in new
    assert f"[REDACTED:{kind}]" in new
    assert counts == {kind: 1}


LEFT_ALONE = [
    ("year", "In 2024 we sold 1500 units"),
    ("date-time", "2024-01-15 10:30:45 UTC"),
    ("iso-time", "at 2024-01-15T10:30:45.123Z"),
    ("short-number", "room 555-1234"),
    ("order-number", "order 5551234567"),
    ("ssn-shape", "ref 123-45-6789"),
    ("ms-timestamp", "ts 1700000000000 ms"),
    ("long-digits", "id 12345678901234567890123"),
    ("price", "total 1,234.56 EUR"),
    ("non-luhn-card", "card 4111 1111 1111 1112"),
    ("bad-ipv4", "address 10.0.0.256"),
    ("version-3", "version 1.2.3"),
    ("five-dots", "oid 1.3.6.1.4.1"),
    ("cpp-scope", "std::vector<int>, a::b and Db::Cache"),
    ("clock", "meet at 12:30:45"),
    ("mac", "mac 00:1A:2B:3C:4D:5E"),
    ("bearer-prose", "the bearer instrument was signed"),
    ("slug", "see task-management-system-for-teams-v2"),
    ("low-entropy-token", "token: aaaaaaaaaaaaaaaaaaaa"),
    ("short-token", "max_tokens=1024"),
    ("not-an-email", "ping user@localhost or @handle"),
    ("plain-prose", "The weather in Paris is mild; book the 10:30 train, key points below."),
]


@pytest.mark.parametrize("text", [c[1] for c in LEFT_ALONE], ids=[c[0] for c in LEFT_ALONE])
def test_look_alikes_are_left_alone(text: str) -> None:
    assert redact(text) == (text, {})


@pytest.mark.parametrize(
    ("number", "valid"),
    [
        ("4111111111111111", True),
        ("4111111111111112", False),
        ("378282246310005", True),
        ("378282246310006", False),
        ("6011111111111117", True),
        ("79927398713", True),
        ("79927398710", False),
    ],
    ids=["visa", "visa-bad", "amex", "amex-bad", "discover", "wiki-example", "wiki-bad"],
)
def test_luhn_check(number: str, valid: bool) -> None:
    assert redaction.luhn_valid(number) is valid


def test_card_and_phone_in_one_text_are_both_counted() -> None:
    new, counts = redact("pay 4111-1111-1111-1111, call 555-123-4567, mail a@b.io")
    assert new == "pay [REDACTED:credit_card], call [REDACTED:phone], mail [REDACTED:email]"
    assert counts == {"credit_card": 1, "phone": 1, "email": 1}


# --- configuration ---------------------------------------------------------------------------------


def test_custom_patterns_count_as_custom() -> None:
    redactor = redaction.Redactor(builtins=[], patterns=[r"EMP-\d{6}", r"(?i)project\s+falcon"])
    counts: dict[str, int] = {}
    new = redactor.redact_text("EMP-123456 works on Project Falcon, mail a@b.io", counts)
    assert new == "[REDACTED:custom] works on [REDACTED:custom], mail a@b.io"
    assert counts == {"custom": 2}


def test_ip_alias_enables_both_ip_kinds_and_nothing_else() -> None:
    redactor = redaction.Redactor(builtins=["ip"])
    assert redactor.builtins == ("ipv6", "ipv4")
    assert redactor.redact_text("1.2.3.4 ::1 a@b.io") == "[REDACTED:ipv4] [REDACTED:ipv6] a@b.io"


def test_no_builtins_and_no_patterns_changes_nothing() -> None:
    redactor = redaction.Redactor(builtins=[])
    episode = ep.Episode(agent_id="a", state=ep.State(query="a@b.io"))
    assert redactor.redact_episode(episode).state.query == "a@b.io"


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"builtins": ["email", "ssn"]}, "'ssn'"),
        ({"patterns": ["("]}, "'('"),
        ({"patterns": [r"\d*"]}, "'\\\\d*'"),
        ({"patterns": [""]}, "''"),
    ],
    ids=["unknown-builtin", "invalid-regex", "matches-empty", "empty-pattern"],
)
def test_bad_configuration_raises_naming_it(kwargs: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError) as info:
        redaction.Redactor(**kwargs)
    assert named in str(info.value)


# --- episodes --------------------------------------------------------------------------------------

EMAIL = "pat.doe@example.com"
PHONE = "+1 415 555 0132"
CARD = "4242 4242 4242 4242"


def _episode(**fields: Any) -> ep.Episode:
    return ep.Episode(**{"agent_id": "bot", "session_id": "s", "turn": 0, "timestamp": T0, **fields})


PLACES = [
    ("query", lambda v: {"state": ep.State(query=f"mail {v} please")}),
    ("context-value", lambda v: {"state": ep.State(query="q", context={"user": {"contact": [f"x {v}"]}})}),
    ("context-key", lambda v: {"state": ep.State(query="q", context={v: "vip"})}),
    ("action-arguments", lambda v: {"action": ep.Action(tool="send", arguments={"to": v})}),
    ("message-content", lambda v: {"messages": [ep.Message(role="user", content=f"I am {v}")]}),
    (
        "tool-call-arguments",
        lambda v: {
            "messages": [
                ep.Message(
                    role="assistant",
                    tool_calls=[
                        ep.ToolCall(
                            function=ep.ToolCallFunction(name="send", arguments=f'{{"to": "line\\n{v}"}}')
                        )
                    ],
                )
            ]
        },
    ),
    ("result", lambda v: {"result": {"sent_to": v}}),
    ("error", lambda v: {"error": f"could not reach {v}"}),
    ("label-reason", lambda v: {"labels": [ep.Label(score=1.0, grader="g", reason=f"user {v} was happy")]}),
    ("session-id", lambda v: {"session_id": f"user:{v}"}),
]


@pytest.mark.parametrize(
    ("value", "kind"),
    [(EMAIL, "email"), (PHONE, "phone"), (CARD, "credit_card")],
    ids=["email", "phone", "card"],
)
@pytest.mark.parametrize("place", [p[1] for p in PLACES], ids=[p[0] for p in PLACES])
def test_every_text_field_of_an_episode_is_redacted(place: Any, value: str, kind: str) -> None:
    episode = _episode(**place(value))
    clean = REDACTOR.redact_episode(episode)
    dumped = clean.model_dump_json(by_alias=True)
    assert value not in dumped
    assert f"[REDACTED:{kind}]" in dumped
    assert clean.redactions == {kind: 1}
    # The caller's episode is untouched, and the id (derived from the raw content) is kept.
    assert value in episode.model_dump_json(by_alias=True)
    assert clean.id == episode.id


KEY = "sk-proj-" + "A1b2C3d4" * 4
# A key right after a character that JSON escapes ("\\n", "\\t", "\\u0001"): in the JSON text the
# gates read, the escape's letter runs into the key, so the key's prefix no longer starts the run.
KEY_AFTER_ESCAPE = [
    ("context", lambda v: {"state": ep.State(query="q", context={"note": v})}),
    ("action-arguments", lambda v: {"action": ep.Action(tool="send", arguments={"note": [v]})}),
    ("result", lambda v: {"result": {"log": v}}),
    (
        "tool-call-arguments",
        lambda v: {
            "messages": [
                ep.Message(
                    role="assistant",
                    tool_calls=[
                        ep.ToolCall(
                            function=ep.ToolCallFunction(
                                name="send", arguments=json.dumps({"note": v}, ensure_ascii=False)
                            )
                        )
                    ],
                )
            ]
        },
    ),
]


@pytest.mark.parametrize("before", ["\n", "\t", "\x01", "line\n"], ids=["newline", "tab", "control", "text"])
@pytest.mark.parametrize("place", [p[1] for p in KEY_AFTER_ESCAPE], ids=[p[0] for p in KEY_AFTER_ESCAPE])
def test_a_key_right_after_an_escaped_character_in_a_json_field_is_redacted(place: Any, before: str) -> None:
    clean = REDACTOR.redact_episode(_episode(**place(before + KEY)))
    assert KEY not in clean.model_dump_json(by_alias=True)
    assert clean.redactions == {"api_key": 1}


def test_counts_add_to_existing_ones_and_a_second_pass_changes_nothing() -> None:
    episode = _episode(
        state=ep.State(query=f"{EMAIL} and {EMAIL}", context={"phone": PHONE}), redactions={"email": 3}
    )
    once = REDACTOR.redact_episode(episode)
    assert once.redactions == {"email": 5, "phone": 1}
    twice = REDACTOR.redact_episode(once)
    assert twice == once


def test_secret_named_json_keys_have_their_values_replaced() -> None:
    episode = _episode(
        action=ep.Action(
            tool="login",
            arguments={"user": "pat", "password": "hunter2", "apiKey": "k3yV4lue9", "max_tokens": "1024"},
        )
    )
    args = REDACTOR.redact_episode(episode).action
    assert args is not None
    assert args.arguments == {
        "user": "pat",
        "password": "[REDACTED:api_key]",
        "apiKey": "[REDACTED:api_key]",
        "max_tokens": "1024",
    }


def test_a_password_sent_as_a_json_number_is_replaced() -> None:
    episode = _episode(
        action=ep.Action(tool="login", arguments={"user": "pat", "password": 123456, "max_tokens": 1024})
    )
    clean = REDACTOR.redact_episode(episode)
    assert clean.action is not None
    assert clean.action.arguments == {"user": "pat", "password": "[REDACTED:api_key]", "max_tokens": 1024}
    assert clean.redactions == {"api_key": 1}


def test_keys_redacted_alike_keep_every_value() -> None:
    counts: dict[str, int] = {}
    value = {"ana@example.com": {"orders": 3}, "bo@example.org": {"orders": 5}, "cy@example.net": 1}
    assert REDACTOR.redact_json(value, counts) == {
        "[REDACTED:email]": {"orders": 3},
        "[REDACTED:email]#2": {"orders": 5},
        "[REDACTED:email]#3": 1,
    }
    assert counts == {"email": 3}


def test_redact_json_handles_nested_values_and_keys() -> None:
    counts: dict[str, int] = {}
    value = {"users": [{"mail": EMAIL, "auth": {"client_secret": "s3cr3t-Value-42"}}], "n": 1}
    assert REDACTOR.redact_json(value, counts) == {
        "users": [{"mail": "[REDACTED:email]", "auth": {"client_secret": "[REDACTED:api_key]"}}],
        "n": 1,
    }
    assert counts == {"email": 1, "api_key": 1}
    clean = {"users": [{"mail": "none"}]}
    assert REDACTOR.redact_json(clean) is clean


def test_a_card_number_sent_as_a_json_number_is_replaced() -> None:
    episode = _episode(
        action=ep.Action(tool="pay", arguments={"card": 4242424242424242, "amount": 1234567890123, "n": 3})
    )
    clean = REDACTOR.redact_episode(episode)
    assert clean.action is not None
    assert clean.action.arguments == {"card": "[REDACTED:credit_card]", "amount": 1234567890123, "n": 3}
    assert clean.redactions == {"credit_card": 1}


def test_text_that_grows_past_its_limit_is_cut_at_the_limit() -> None:
    query = ("a@b.io " * (ep.MAX_TEXT_CHARS // 7))[: ep.MAX_TEXT_CHARS]
    clean = REDACTOR.redact_episode(_episode(state=ep.State(query=query)))
    assert len(clean.state.query) == ep.MAX_TEXT_CHARS
    assert "a@b.io" not in clean.state.query


def test_a_json_field_that_grows_past_its_limit_is_refused_naming_it() -> None:
    blob = "a@b.io " * (ep.MAX_JSON_BYTES // 8)
    episode = _episode(result={"log": blob})
    with pytest.raises(ValueError, match=r"^result: "):
        REDACTOR.redact_episode(episode)


# --- end to end: the database file -----------------------------------------------------------------

PLANTED = {
    "email": "zelda.planted@example.net",
    "phone": "+44 20 7946 0321",
    "card": "4000 0566 5566 5556",
    "ipv4": "203.0.113.77",
    "ipv6": "2001:db8:feed::77",
    "bearer": "Zq8VbN3mK2pL9xW4",
    "api_key": "sk-proj-P1antedS3cretKey0123456789",
    "password": "pl4nted-passw0rd",
}


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "pii.db"


def _raw_bytes(path: Path) -> Iterator[tuple[str, bytes]]:
    for suffix in ("", "-wal", "-shm", "-journal"):
        candidate = path.with_name(path.name + suffix)
        if candidate.exists():
            yield candidate.name, candidate.read_bytes()


def test_planted_pii_never_reaches_the_database_file(db_path: Path) -> None:
    pii = PLANTED
    episodes = [
        _episode(
            session_id=f"s{i}",
            state=ep.State(
                query=f"I am {pii['email']}, call {pii['phone']}",
                context={"card": pii["card"], "client_ip": pii["ipv4"], "v6": pii["ipv6"]},
            ),
            messages=[
                ep.Message(role="user", content=f"Authorization: Bearer {pii['bearer']}"),
                ep.Message(
                    role="assistant",
                    tool_calls=[
                        ep.ToolCall(
                            function=ep.ToolCallFunction(
                                name="login",
                                arguments=f'{{"password": "{pii["password"]}", "key": "{pii["api_key"]}"}}',
                            )
                        )
                    ],
                ),
            ],
            result=f"mailed {pii['email']}",
        )
        for i in range(50)
    ]
    store = sqlite.SQLiteStore(db_path)
    try:
        assert len(store.insert_many(episodes).accepted) == 50
        first = episodes[0].id
        store.add_label(first, ep.Label(score=0.2, grader="judge", reason=f"user {pii['email']} complained"))
        stored = store.get(first)
        assert stored is not None
        assert stored.redactions["email"] == 3  # query, result, and the label reason
        files = dict(_raw_bytes(db_path))
        assert f"{db_path.name}-wal" in files, "expected the WAL file while the store is open"
        checked_open = files
    finally:
        store.close()
    checked_closed = dict(_raw_bytes(db_path))
    for files in (checked_open, checked_closed):
        for name, data in files.items():
            for kind, value in pii.items():
                assert value.encode() not in data, f"{kind} {value!r} found in {name}"
    # The check can fail: the placeholders did reach the file.
    assert b"[REDACTED:email]" in b"".join(checked_closed.values())


def test_a_store_without_redaction_would_have_stored_it(db_path: Path) -> None:
    """The byte check above is meaningful: with redaction off the same value is in the file."""
    store = sqlite.SQLiteStore(db_path, redactor=redaction.Redactor(builtins=[]))
    try:
        store.insert_many([_episode(state=ep.State(query=PLANTED["email"]))])
        assert store.count() == 1
    finally:
        store.close()
    assert any(PLANTED["email"].encode() in data for _, data in _raw_bytes(db_path))


def test_query_of_a_redacted_store_returns_placeholders(db_path: Path) -> None:
    with sqlite.SQLiteStore(db_path) as store:
        store.insert_many([_episode(state=ep.State(query=f"hi {PLANTED['email']}"))])
        (doc,) = list(store.iter_json(store_base.EpisodeQuery()))
    assert doc["state"]["query"] == "hi [REDACTED:email]"
    assert doc["redactions"] == {"email": 1}
