"""Redaction: replace personal data and secrets in an episode before any store writes it.

Every store backend (``sqlite.py``, ``cosmos.py``) calls ``Redactor.redact_episode`` on each episode
(and ``redact_label`` on each new label) before the first byte reaches disk or the network, so raw
values are never stored. The collector builds a ``Redactor`` from ``EpisodeCapture.spec.redaction``
(``builtins`` and ``patterns``); ``store.open_store`` uses ``Redactor.default()`` otherwise.

What is looked at: every free-text string of an episode: ``sessionId``, ``state.query``,
``state.context`` (recursively, dict keys included), ``action.arguments``, each message's
``content``, ``name`` and tool-call ``arguments`` (parsed when they are JSON), ``result``, ``error``,
and each label's ``reason`` and ``error``. Identifiers (``id``, ``agentId``, ``modelVersion``, tool
and grader names) are validated names and are left alone.

A detected value becomes ``[REDACTED:<kind>]`` and ``episode.redactions[<kind>]`` counts the
replacements (added to any counts already there); dict keys redacted alike in one object become
``[REDACTED:<kind>]#2``, ``#3``... so no value is lost. The kinds, one per builtin:

- ``email``;
- ``phone``: international (``+44 20 7946 0958``, ``+919876543210``) and US formats
  (``(555) 123-4567``, ``555-123-4567``, ``1 555 123 4567``); plain digit runs, years and short
  numbers are not phones;
- ``credit_card``: 13-19 digits, optionally grouped by spaces or dashes, starting with 2-6 (the card
  networks' ranges, which keeps millisecond timestamps out) and passing the Luhn check;
- ``ipv4``, ``ipv6``: candidates confirmed by the ``ipaddress`` module (the builtin name ``ip``
  enables both);
- ``bearer``: the token after ``Bearer`` (the word itself is kept);
- ``api_key``: known key shapes (``sk-...``, ``AKIA...``, ``ghp_...``, ``github_pat_...``,
  ``xox[abposr]-...``, ``AIza...``, Stripe ``sk_live_...``, JWTs, PEM private keys); the value of a
  ``password=``/``api_key:``/``TOKEN=``... assignment in text (passwords always, other names when
  the value has 12+ characters of two classes and 3+ bits of entropy per character); and in
  structured JSON, the string under a key that names a secret (``password``, ``apiKey``,
  ``client_secret``, ``accessToken``, ...: passwords always, a number too; others when 8+
  characters of two classes without spaces).

Placeholders can make a text longer: a text field that grows past its limit is cut at the limit; a
JSON field that grows past ``episode.MAX_JSON_BYTES`` raises ``ValueError`` naming the field (the
collector then refuses that one episode).

Custom ``patterns`` are regular expressions; every match becomes ``[REDACTED:custom]``, counted as
``custom``. (A ``name=regex`` form was considered and rejected: it cannot be told apart from a regex
such as ``password=\\S+``.) Builtins run first, then the patterns in order. A pattern that matches
the empty string is refused.

Speed: this runs in the collector's hot path. The text fields of an episode (JSON fields as orjson
text) are joined once and every detector's *gate* (substring tests, digit-shape and token views made
with ``bytes.translate``, regexes that start with a rare literal) runs over that one text: a clean
~1 KB episode costs about 15-30 us. Only detectors whose gate passed then run, field by field and
string by string, each gated again, so one email in a query does not walk the whole context.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import orjson
from pydantic import TypeAdapter, ValidationError

from lightning_op.api import episode as ep

PLACEHOLDER = ep.REDACTED_PREFIX + "{kind}]"
CUSTOM_KIND = "custom"
#: Every builtin detector, in the order they run (specific shapes before general ones).
BUILTINS: tuple[str, ...] = ("bearer", "api_key", "email", "credit_card", "ipv6", "ipv4", "phone")
#: Other names accepted in ``builtins`` and what they enable.
ALIASES: Mapping[str, tuple[str, ...]] = {"ip": ("ipv4", "ipv6")}
MAX_PATTERN_CHARS = 1000

_Counts = dict[str, int]
_JSON_ADAPTER: TypeAdapter[Any] = TypeAdapter(ep.JsonValue)


def _placeholder(kind: str) -> str:
    return PLACEHOLDER.format(kind=kind)


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum every payment card number satisfies (``digits``: characters 0-9 only)."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _shannon_entropy(text: str) -> float:
    counts: dict[str, int] = {}
    for char in text:
        counts[char] = counts.get(char, 0) + 1
    length = len(text)
    return -sum(c / length * math.log2(c / length) for c in counts.values())


def _char_classes(text: str) -> int:
    return (
        any(c.islower() for c in text)
        + any(c.isupper() for c in text)
        + any(c.isdigit() for c in text)
        + any(not c.isalnum() for c in text)
    )


_DIGITS_AS_ZERO = bytes.maketrans(b"0123456789", b"0000000000")
_NUMBER_SHAPE = bytes.maketrans(b"0123456789 .-", b"0000000000---")
_TOKEN_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
_TOKEN_AS_A = bytes(ord("a") if bytes([i]) in _TOKEN_CHARS else ord(" ") for i in range(256))


class _View:
    """One text and the cheap derived forms the gates look at, each computed on first use."""

    __slots__ = ("text", "_lower", "_digits", "_shape", "_tokens", "_names")

    def __init__(self, text: str) -> None:
        self.text = text
        self._names: bool | None = None
        self._lower: str | None = None
        self._digits: bytes | None = None
        self._shape: bytes | None = None
        self._tokens: bytes | None = None

    @property
    def names_a_secret(self) -> bool:
        """Whether a word that names a secret (password, token, api key, ...) occurs, in any case."""
        if self._names is None:
            lower = self.lower
            self._names = False
            for gate in _NAME_GATES:
                if gate in lower:
                    self._names = True
                    break
        return self._names

    @property
    def lower(self) -> str:
        if self._lower is None:
            self._lower = self.text.lower()
        return self._lower

    @property
    def digits(self) -> bytes:
        """Every digit as '0', with the separators a number may contain (`` -.()``) removed."""
        if self._digits is None:
            raw = self.text.encode("utf-8", "surrogatepass")
            self._digits = raw.translate(_DIGITS_AS_ZERO, b" -.()")
        return self._digits

    @property
    def shape(self) -> bytes:
        """Every digit as '0', `` .-`` as '-', parentheses removed: ``(555) 123-4567`` is ``000-000-0000``."""
        if self._shape is None:
            raw = self.text.encode("utf-8", "surrogatepass")
            self._shape = raw.translate(_NUMBER_SHAPE, b"()")
        return self._shape

    @property
    def tokens(self) -> bytes:
        """Letters, digits, '_' and '-' as 'a', everything else as ' ': long runs are key candidates."""
        if self._tokens is None:
            self._tokens = self.text.encode("utf-8", "surrogatepass").translate(_TOKEN_AS_A)
        return self._tokens


# --- detectors ----------------------------------------------------------------------------------
# A detector is a gate (a cheap necessary condition, on a _View) and a redact function (text ->
# text, counting what it replaced). Patterns start with a literal or a character class where
# possible; look-behinds sit after the first character (``x(?<![\w].)``) for the same reason.


@dataclass(frozen=True)
class _Detector:
    kind: str
    gate: Callable[[_View], bool]
    redact: Callable[[str, _Counts], str]


def _redact_matches(
    text: str,
    pattern: re.Pattern[str],
    kind: str,
    replace: Callable[[re.Match[str], str], str | None],
    counts: _Counts,
) -> str:
    """Substitute each match by ``replace(match, placeholder)``; ``None`` leaves the match as it is."""
    placeholder = _placeholder(kind)
    hits = 0

    def one(match: re.Match[str]) -> str:
        nonlocal hits
        new = replace(match, placeholder)
        if new is None:
            return match.group(0)
        hits += 1
        return new

    new_text = pattern.sub(one, text)
    if hits:
        counts[kind] = counts.get(kind, 0) + hits
    return new_text


def _count(counts: _Counts, kind: str, n: int) -> None:
    if n:
        counts[kind] = counts.get(kind, 0) + n


# email ---------------------------------------------------------------------------------------------
_EMAIL = re.compile(
    r"[A-Za-z0-9._%+\-]+@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}"
    r"(?![A-Za-z0-9\-])"
)


def _redact_email(text: str, counts: _Counts) -> str:
    if "@" not in text:
        return text
    new, n = _EMAIL.subn(_placeholder("email"), text)
    _count(counts, "email", n)
    return new


# bearer --------------------------------------------------------------------------------------------
_BEARER = re.compile(r"(?<![A-Za-z0-9])([Bb]earer|BEARER)(\s+)([A-Za-z0-9\-._~+/]{8,}=*)")
_TOKEN_SYMBOLS = frozenset("0123456789-._~+/=")


def _gate_bearer(view: _View) -> bool:
    # One scan of the lower-cased text (which the api_key gate reads too) instead of two.
    return "earer" in view.lower


def _bearer(match: re.Match[str], placeholder: str) -> str | None:
    token = match.group(3)
    # Prose ("the bearer instrument") is no token: a token has a digit or symbol, inner capitals, or length.
    tokenish = (
        len(token) >= 20
        or any(c in _TOKEN_SYMBOLS for c in token)
        or (any(c.isupper() for c in token[1:]) and any(c.islower() for c in token))
    )
    return match.group(1) + match.group(2) + placeholder if tokenish else None


def _redact_bearer(text: str, counts: _Counts) -> str:
    if "earer" not in text and "EARER" not in text:
        return text
    return _redact_matches(text, _BEARER, "bearer", _bearer, counts)


# api_key ---------------------------------------------------------------------------------------------
# A key starts a run of token characters (so "task-management-..." holds no "sk-" key).
_KEY_SHAPES = re.compile(
    r"(?<![A-Za-z0-9_\-])(?:sk-(?:[A-Za-z0-9]+-)*[A-Za-z0-9_\-]{20,}"
    r"|sk_(?:live|test)_[A-Za-z0-9]{16,}|rk_(?:live|test)_[A-Za-z0-9]{16,}"
    r"|AKIA[0-9A-Z]{16}|ASIA[0-9A-Z]{16}"
    r"|gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255}"
    r"|xox[abposr]-[A-Za-z0-9\-]{10,}"
    r"|AIza[0-9A-Za-z_\-]{35}"
    r"|eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----"
    r")(?![A-Za-z0-9_\-])",
    re.DOTALL,
)
_KEY_SHAPE_GATES = (
    "sk-",
    "sk_",
    "rk_",
    "AKIA",
    "ASIA",
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "xox",
    "AIza",
    "eyJ",
    "PRIVATE KEY",
)
# Words that name a secret, in a ``name = value`` assignment in text or as a JSON key.
_NAME_GATES = ("key", "secret", "token", "passw", "passp", "pwd", "credential")
_PASSWORD_NAMES = ("password", "passwd", "passphrase", "pwd")
_SECRET_NAMES = (
    "apikey",
    "secret",
    "secretkey",
    "clientsecret",
    "token",
    "accesskey",
    "privatekey",
    "credential",
    "credentials",
)
# Secret names as they may appear right before the ':' or '=' of an assignment (lower-cased).
_ASSIGNED_NAMES = tuple(
    sorted(
        {
            *_PASSWORD_NAMES,
            *(
                f"{a}{sep}{b}"
                for a, b in (
                    ("api", "key"),
                    ("secret", "key"),
                    ("client", "secret"),
                    ("access", "key"),
                    ("private", "key"),
                )
                for sep in ("", "_", "-")
            ),
            "secret",
            "token",
            "credential",
            "credentials",
        },
        key=len,
        reverse=True,
    )
)
_NAME_LOOKBACK = 48
_VALUE_AFTER = re.compile(r"\s*[\"']?([^\s\"',;&}\]]{4,})")
_MIN_TEXT_SECRET_CHARS = 12
_MIN_TEXT_SECRET_ENTROPY = 3.0
_MIN_VALUE_SECRET_CHARS = 8


_MIN_KEY_CHARS = b"a" * 15
_PEM_LINE = b"a" * 40


def _has_key_shape(view: _View) -> bool:
    """Whether a run of 15+ token characters (every key shape is one; a PEM block's base64 lines
    are longer) starts with a known key prefix."""
    tokens = view.tokens
    pos = tokens.find(_MIN_KEY_CHARS)
    if pos < 0:
        return False
    text = view.text
    if _PEM_LINE in tokens and "PRIVATE KEY" in text:
        return True
    if not text.isascii() or "\\" in text:
        # UTF-8 offsets differ from string offsets; and in JSON text (``_json_text``) an escape puts
        # a letter right before a key ("x\\nsk-..."), so no run starts with its prefix. Fall back to
        # substring tests.
        return any(g in text for g in _KEY_SHAPE_GATES)
    while pos >= 0:
        # ``find`` returns the lowest index, which is where a run starts.
        if text.startswith(_KEY_SHAPE_GATES, pos):
            return True
        end = tokens.find(b" ", pos)
        if end < 0:
            return False
        pos = tokens.find(_MIN_KEY_CHARS, end)
    return False


def _gate_api_key(view: _View) -> bool:
    text = view.text
    if len(text) >= 15 and _has_key_shape(view):
        return True
    if ":" not in text and "=" not in text:
        return False
    return view.names_a_secret


def _text_value_is_secret(value: str) -> bool:
    return (
        len(value) >= _MIN_TEXT_SECRET_CHARS
        and _char_classes(value) >= 2
        and _shannon_entropy(value) >= _MIN_TEXT_SECRET_ENTROPY
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _unique_key(key: str, taken: Mapping[Any, Any]) -> str:
    """``key#2``, ``key#3``...: the first not in ``taken``."""
    n = 2
    while f"{key}#{n}" in taken:
        n += 1
    return f"{key}#{n}"


def _secret_key(key: str) -> str | None:
    """'password' or 'secret' when a JSON key names one (``db_password``, ``apiKey``), else None."""
    norm = key.lower().replace("_", "").replace("-", "").replace(".", "")
    if norm.endswith(_PASSWORD_NAMES):
        return "password"
    if norm.endswith(_SECRET_NAMES):
        return "secret"
    return None


def _assigned_name(text: str, lower: str, sep: int) -> str | None:
    """The secret name that ends just before the separator at ``sep`` (``db_password``, ``apiKey``)."""
    head_start = max(0, sep - _NAME_LOOKBACK)
    head = lower[head_start:sep].rstrip()
    if head.endswith(("'", '"')):
        head = head[:-1]
    if not head.endswith(_ASSIGNED_NAMES):
        return None
    name = next(n for n in _ASSIGNED_NAMES if head.endswith(n))
    start = head_start + len(head) - len(name)
    if start > 0:
        before = text[start - 1]
        # The name starts an identifier component: after a non-alphanumeric, or camelCase (apiKey).
        camel = text[start].isupper() and (before.islower() or before.isdigit())
        if before.isalnum() and not camel:
            return None
    return name


def _assignment_spans(text: str) -> list[tuple[int, int]]:
    """Spans of secret values assigned in text: ``password=...``, ``"api_key": "..."``, ``TOKEN: ...``."""
    lower = text.lower()
    if len(lower) != len(text):
        # A few characters change length when lower-cased (U+0130); keep the indices aligned.
        lower = "".join(c if len(c.lower()) != 1 else c.lower() for c in text)
    spans: list[tuple[int, int]] = []
    for sep_char in ":=":
        pos = lower.find(sep_char)
        while pos != -1:
            name = _assigned_name(text, lower, pos)
            if name is not None:
                value = _VALUE_AFTER.match(text, pos + 1)
                if value is not None and not value.group(1).startswith(ep.REDACTED_PREFIX):
                    if name in _PASSWORD_NAMES or _text_value_is_secret(value.group(1)):
                        spans.append(value.span(1))
            pos = lower.find(sep_char, pos + 1)
    return sorted(spans)


def _redact_api_key(text: str, counts: _Counts) -> str:
    if _has_key_shape(_View(text)):
        text, n = _KEY_SHAPES.subn(_placeholder("api_key"), text)
        _count(counts, "api_key", n)
    if ":" not in text and "=" not in text:
        return text
    spans = _assignment_spans(text)
    if not spans:
        return text
    parts, last = [], 0
    for start, end in spans:
        if start < last:
            continue
        parts.append(text[last:start])
        parts.append(_placeholder("api_key"))
        last = end
    parts.append(text[last:])
    _count(counts, "api_key", (len(parts) - 1) // 2)
    return "".join(parts)


# credit_card ---------------------------------------------------------------------------------------
_CREDIT_CARD = re.compile(r"[2-6](?<![\w\-.].)(?:[ \-]?\d){12,18}(?!\d)")


def _credit_card(match: re.Match[str], placeholder: str) -> str | None:
    digits = match.group(0).replace(" ", "").replace("-", "")
    return placeholder if 13 <= len(digits) <= 19 and luhn_valid(digits) else None


def _redact_credit_card(text: str, counts: _Counts) -> str:
    return _redact_matches(text, _CREDIT_CARD, "credit_card", _credit_card, counts)


# ipv4 / ipv6 ---------------------------------------------------------------------------------------
_IPV4_GATE = re.compile(r"\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]")
_IPV4 = re.compile(r"\d(?<![\w.].)\d{0,2}(?:\.\d{1,3}){3}(?!\.?\w)")
_IPV6_GATE = re.compile(r":[0-9A-Fa-f]{0,4}:")
_IPV6 = re.compile(
    r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:(?<=:)\d{1,3}(?:\.\d{1,3}){3})?(?![\w:.])"
)


def _ipv4(match: re.Match[str], placeholder: str) -> str | None:
    try:
        ipaddress.IPv4Address(match.group(0))
    except ValueError:
        return None
    return placeholder


def _ipv6(match: re.Match[str], placeholder: str) -> str | None:
    candidate = match.group(0)
    # "a::b" and "dead::beef" are valid addresses but read as code (C++/Rust scopes): an address in
    # text has a digit or at least three colons.
    if not any(c.isdigit() for c in candidate) and candidate.count(":") < 3:
        return None
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return None
    return placeholder


def _gate_ipv4(view: _View) -> bool:
    return _IPV4_GATE.search(view.text) is not None


def _redact_ipv4(text: str, counts: _Counts) -> str:
    if _IPV4_GATE.search(text) is None:
        return text
    return _redact_matches(text, _IPV4, "ipv4", _ipv4, counts)


def _gate_ipv6(view: _View) -> bool:
    return ":" in view.text and _IPV6_GATE.search(view.text) is not None


def _redact_ipv6(text: str, counts: _Counts) -> str:
    if ":" not in text or _IPV6_GATE.search(text) is None:
        return text
    return _redact_matches(text, _IPV6, "ipv6", _ipv6, counts)


# phone ---------------------------------------------------------------------------------------------
# International: '+' and 8-15 digits in groups; the candidate may run on, the callback cuts it.
_PHONE_INTL = re.compile(r"\+(?<![\w+].)\d[\d .\-()]{6,24}")
_PHONE_US = re.compile(
    r"[(\d](?<![\w+(.\-/].)"
    r"(?:(?<=\()\d{3}\)[ .\-]?|(?<=1)[ .\-]?(?:\(\d{3}\)[ .\-]?|\d{3}[ .\-])|(?<=\d)\d{2}[ .\-])"
    r"\d{3}[ .\-]\d{4}(?!\w|[.\-/]\d)"
)
_MAX_PHONE_DIGITS = 15


def _gate_phone(view: _View) -> bool:
    shape = view.shape
    return (
        b"000-000-0000" in shape
        or b"000000-0000" in shape
        or ("+" in view.text and b"+0" in shape and b"00000000" in view.digits)
    )


def _phone_intl(match: re.Match[str], placeholder: str) -> str | None:
    candidate = match.group(0)
    digits, end = 0, 0
    for index, char in enumerate(candidate):
        if char.isdigit():
            digits += 1
            end = index + 1
            if digits == _MAX_PHONE_DIGITS:
                break
    return placeholder + candidate[end:] if digits >= 8 else None


def _phone_us(match: re.Match[str], placeholder: str) -> str | None:
    return placeholder


def _redact_phone(text: str, counts: _Counts) -> str:
    if "+" in text:
        text = _redact_matches(text, _PHONE_INTL, "phone", _phone_intl, counts)
    return _redact_matches(text, _PHONE_US, "phone", _phone_us, counts)


_BUILTIN_DETECTORS: Mapping[str, _Detector] = {
    "bearer": _Detector("bearer", _gate_bearer, _redact_bearer),
    "api_key": _Detector("api_key", _gate_api_key, _redact_api_key),
    "email": _Detector("email", lambda v: "@" in v.text, _redact_email),
    "credit_card": _Detector("credit_card", lambda v: b"0000000000000" in v.digits, _redact_credit_card),
    "ipv6": _Detector("ipv6", _gate_ipv6, _redact_ipv6),
    "ipv4": _Detector("ipv4", _gate_ipv4, _redact_ipv4),
    "phone": _Detector("phone", _gate_phone, _redact_phone),
}


def _custom_detector(pattern: object) -> _Detector:
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"redaction pattern {pattern!r} must be a non-empty string")
    if len(pattern) > MAX_PATTERN_CHARS:
        raise ValueError(
            f"redaction pattern {pattern[:40]!r}... has {len(pattern)} characters, limit {MAX_PATTERN_CHARS}"
        )
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"redaction pattern {pattern!r} is not a valid regular expression: {exc}") from exc
    if compiled.fullmatch("") is not None:
        raise ValueError(f"redaction pattern {pattern!r} matches the empty string; make it match something")
    placeholder = _placeholder(CUSTOM_KIND)

    def redact(text: str, counts: _Counts) -> str:
        new, n = compiled.subn(placeholder, text)
        _count(counts, CUSTOM_KIND, n)
        return new

    return _Detector(CUSTOM_KIND, lambda v: compiled.search(v.text) is not None, redact)


# --- walking an episode -----------------------------------------------------------------------------


def _collect(value: Any, out: list[str]) -> None:
    """Append every string and dict key in a JSON value to ``out``."""
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str):
                out.append(key)
            _collect(item, out)
    elif isinstance(value, list | tuple):
        for item in value:
            _collect(item, out)


def _json_text(value: Any) -> str:
    """Every string and key of a JSON value in one text, for the gates (orjson: ~1 us per KB).

    JSON escapes only quotes, backslashes and control characters, none of which any builtin
    detector's value contains, so a gate that passes on a string also passes on this text.
    """
    kind = type(value)
    if kind is str:
        return cast(str, value)
    if value is None or kind is int or kind is float or kind is bool:
        return ""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:  # e.g. an integer beyond 64 bits, which json accepts and orjson does not
        out: list[str] = []
        _collect(value, out)
        return "\n".join(out)


def _episode_strings(episode: ep.Episode) -> list[str]:
    """The text of every redactable field of an episode (JSON fields as JSON text)."""
    out: list[str] = [episode.session_id or "", episode.state.query, _json_text(episode.state.context)]
    if episode.action is not None:
        out.append(_json_text(episode.action.arguments))
    for message in episode.messages or ():
        if message.content:
            out.append(message.content)
        if message.name:
            out.append(message.name)
        for call in message.tool_calls or ():
            out.append(call.function.arguments)
    out.append(_json_text(episode.result))
    if episode.error:
        out.append(episode.error)
    for label in episode.labels:
        out.append(label.reason)
        if label.error:
            out.append(label.error)
    return out


_CARD_MIN, _CARD_MAX = 10**12, 10**19


class _Pass:
    """One redaction pass with the detectors whose gate passed on the episode's text."""

    def __init__(self, detectors: tuple[_Detector, ...], secret_keys: bool) -> None:
        self.detectors = detectors
        # Whether values under secret-named JSON keys are redacted.
        self.secret_keys = secret_keys
        self.cards = any(d.kind == "credit_card" for d in detectors)
        self.counts: _Counts = {}

    def text(self, text: str) -> str:
        if len(text) < 3:
            return text
        view = _View(text)
        for detector in self.detectors:
            if detector.gate(view):
                text = detector.redact(text, self.counts)
                view = _View(text)
        return text

    def field(self, text: str | None, limit: int) -> str | None:
        """A bounded text field; a value that grew past its limit with placeholders is cut there."""
        if text is None:
            return None
        new = self.text(text)
        return text if new == text else new[:limit]

    def json(self, value: Any) -> Any:
        """Redact strings and dict keys in a JSON value; returns ``value`` itself when unchanged."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            changed = False
            out: dict[Any, Any] = {}
            for key, item in value.items():
                new_key = self.text(key) if isinstance(key, str) else key
                if new_key != key and new_key in out:
                    # two keys redacted alike ({"a@x.io": 1, "b@y.io": 2}): keep both values
                    new_key = _unique_key(new_key, out)
                new_item = self.json(item)
                if self.secret_keys and isinstance(key, str) and isinstance(new_item, str) and new_item:
                    new_item = self._secret_value(key, new_item)
                elif self.secret_keys and isinstance(key, str) and _is_number(new_item):
                    new_item = self._secret_number(key, new_item)
                changed = changed or new_key != key or new_item is not item
                out[new_key] = new_item
            return out if changed else value
        if isinstance(value, list | tuple):
            items = [self.json(item) for item in value]
            return value if all(a is b for a, b in zip(items, value, strict=True)) else items
        if type(value) is int and self.cards and _CARD_MIN <= abs(value) < _CARD_MAX:
            # A card number sent as a JSON number: it becomes the placeholder string.
            digits = str(value)
            new = self.text(digits)
            return value if new == digits else new
        return value

    def _secret_number(self, key: str, value: int | float) -> int | float | str:
        """A password sent as a JSON number (``{"pin": ...}`` is not one; ``{"password": 123456}`` is)."""
        if _secret_key(key) != "password":
            return value
        _count(self.counts, "api_key", 1)
        return _placeholder("api_key")

    def _secret_value(self, key: str, value: str) -> str:
        kind = _secret_key(key)
        if kind is None or value.startswith(ep.REDACTED_PREFIX):
            return value
        if kind == "secret" and (
            len(value) < _MIN_VALUE_SECRET_CHARS
            or any(c.isspace() for c in value)
            or _char_classes(value) < 2
        ):
            return value
        _count(self.counts, "api_key", 1)
        return _placeholder("api_key")

    def narrowed(self, text: str) -> _Pass | None:
        """A pass (sharing this one's counts) with the detectors whose gate also passes on ``text``."""
        view = _View(text)
        detectors = tuple(d for d in self.detectors if d.kind == CUSTOM_KIND or d.gate(view))
        secret_keys = self.secret_keys and view.names_a_secret
        if not detectors and not secret_keys:
            return None
        sub = _Pass(detectors, secret_keys)
        sub.counts = self.counts
        return sub

    def json_field(self, value: Any, where: str) -> Any:
        if isinstance(value, dict | list | tuple):
            # Most fields of an episode with something to redact are clean: skip walking those.
            sub = self.narrowed(_json_text(value))
            if sub is None:
                return value
            new = sub.json(value)
        else:
            new = self.json(value)
        if new is not value:
            try:
                _JSON_ADAPTER.validate_python(new)
            except ValidationError as exc:
                raise ValueError(f"{where}: {ep.validation_reason(exc)} (after redaction)") from exc
        return new

    def tool_arguments(self, arguments: str, where: str) -> str:
        # JSON text: redact the parsed values, so that an escape such as "\n" in front of a value
        # cannot hide it, and secret-named keys are caught.
        try:
            parsed = json.loads(arguments)
        except ValueError:
            new = self.text(arguments)
            return arguments if new == arguments else new[: ep.MAX_JSON_BYTES]
        redacted = self.json_field(parsed, where)
        if redacted is parsed:
            return arguments
        return json.dumps(redacted, ensure_ascii=False, separators=(",", ":"))

    def label(self, label: ep.Label) -> ep.Label:
        reason = self.field(label.reason, ep.MAX_TEXT_CHARS)
        error = self.field(label.error, ep.MAX_TEXT_CHARS)
        if reason is label.reason and error is label.error:
            return label
        return label.model_copy(update={"reason": reason, "error": error})

    def message(self, message: ep.Message, index: int) -> ep.Message:
        update: dict[str, Any] = {}
        content = self.field(message.content, ep.MAX_TEXT_CHARS)
        if content is not message.content:
            update["content"] = content
        name = self.field(message.name, ep.MAX_NAME_CHARS)
        if name is not message.name:
            update["name"] = name
        if message.tool_calls:
            calls = []
            for j, call in enumerate(message.tool_calls):
                where = f"messages.{index}.tool_calls.{j}.function.arguments"
                arguments = self.tool_arguments(call.function.arguments, where)
                if arguments is call.function.arguments:
                    calls.append(call)
                else:
                    function = call.function.model_copy(update={"arguments": arguments})
                    calls.append(call.model_copy(update={"function": function}))
            if any(a is not b for a, b in zip(calls, message.tool_calls, strict=True)):
                update["tool_calls"] = calls
        return message.model_copy(update=update) if update else message

    def episode(self, episode: ep.Episode) -> dict[str, Any]:
        """The fields of ``episode`` that change, as a ``model_copy`` update."""
        update: dict[str, Any] = {}
        session = self.field(episode.session_id, ep.MAX_ID_CHARS)
        if session is not episode.session_id:
            update["session_id"] = session

        state = episode.state
        query = self.field(state.query, ep.MAX_TEXT_CHARS)
        context = self.json_field(state.context, "state.context")
        if query is not state.query or context is not state.context:
            update["state"] = state.model_copy(update={"query": query, "context": context})

        action = episode.action
        if action is not None:
            arguments = self.json_field(action.arguments, "action.arguments")
            if arguments is not action.arguments:
                update["action"] = action.model_copy(update={"arguments": arguments})

        if episode.messages:
            messages = [self.message(m, i) for i, m in enumerate(episode.messages)]
            if any(a is not b for a, b in zip(messages, episode.messages, strict=True)):
                update["messages"] = messages

        result = self.json_field(episode.result, "result")
        if result is not episode.result:
            update["result"] = result
        error = self.field(episode.error, ep.MAX_TEXT_CHARS)
        if error is not episode.error:
            update["error"] = error

        if episode.labels:
            labels = [self.label(label) for label in episode.labels]
            if any(a is not b for a, b in zip(labels, episode.labels, strict=True)):
                update["labels"] = labels
        return update


class Redactor:
    """Finds and replaces personal data and secrets; the module docstring lists the kinds.

    ``builtins``: names from ``BUILTINS`` (or ``ip`` for both IP kinds); ``None`` means all of them,
    ``[]`` none. ``patterns``: extra regular expressions, counted as kind ``custom``. An unknown
    builtin or an invalid pattern raises ``ValueError`` naming it. A ``Redactor`` has no mutable
    state and may be shared between threads.
    """

    def __init__(self, builtins: Iterable[str] | None = None, patterns: Iterable[str] = ()) -> None:
        wanted: set[str] = set()
        for name in BUILTINS if builtins is None else builtins:
            key = str(name).strip().lower().replace("-", "_")
            if key in ALIASES:
                wanted.update(ALIASES[key])
            elif key in _BUILTIN_DETECTORS:
                wanted.add(key)
            else:
                known = ", ".join((*BUILTINS, *ALIASES))
                raise ValueError(f"unknown redaction builtin {name!r}; known builtins: {known}")
        self.builtins: tuple[str, ...] = tuple(b for b in BUILTINS if b in wanted)
        self.patterns: tuple[str, ...] = tuple(patterns)
        self._detectors: tuple[_Detector, ...] = (
            *(_BUILTIN_DETECTORS[b] for b in self.builtins),
            *(_custom_detector(p) for p in self.patterns),
        )

    @classmethod
    def default(cls) -> Redactor:
        """Every builtin detector and no custom patterns."""
        return cls()

    def __repr__(self) -> str:
        return f"Redactor(builtins={list(self.builtins)!r}, patterns={list(self.patterns)!r})"

    def _pass_for(self, strings: Iterable[str]) -> _Pass | None:
        """A pass with the detectors whose gate passes on ``strings`` joined, or None if none does."""
        if not self._detectors:
            return None
        view = _View("\n".join(strings))
        # Custom patterns have no gate that holds on the joined text (anchors, quotes): always run.
        detectors = tuple(d for d in self._detectors if d.kind == CUSTOM_KIND or d.gate(view))
        secret_keys = "api_key" in self.builtins and view.names_a_secret
        return _Pass(detectors, secret_keys) if detectors or secret_keys else None

    def redact_text(self, text: str, counts: dict[str, int] | None = None) -> str:
        """``text`` with every detected value replaced; what was replaced is added to ``counts``."""
        run = self._pass_for((text,))
        if run is None:
            return text
        new = run.text(text)
        if counts is not None:
            for kind, n in run.counts.items():
                counts[kind] = counts.get(kind, 0) + n
        return new

    def redact_json(self, value: Any, counts: dict[str, int] | None = None) -> Any:
        """A JSON value with its strings, dict keys and secret-named keys' values redacted."""
        run = self._pass_for((_json_text(value),))
        if run is None:
            return value
        new = run.json(value)
        if counts is not None:
            for kind, n in run.counts.items():
                counts[kind] = counts.get(kind, 0) + n
        return new

    def redact_label(self, label: ep.Label, counts: dict[str, int] | None = None) -> ep.Label:
        """A copy of ``label`` with ``reason`` and ``error`` redacted; replacements go to ``counts``."""
        run = self._pass_for((label.reason, label.error or ""))
        if run is None:
            return label.model_copy()
        new = run.label(label)
        if counts is not None:
            for kind, n in run.counts.items():
                counts[kind] = counts.get(kind, 0) + n
        return new if new is not label else label.model_copy()

    def redact_episode(self, episode: ep.Episode) -> ep.Episode:
        """A copy of ``episode`` with every detected value replaced and ``redactions`` counted.

        Parts with nothing to redact are shared with ``episode``; neither is modified. Raises
        ``ValueError`` naming the field when a JSON field grows past its size limit.
        """
        clean = self.redacted_episode(episode)
        return episode.model_copy() if clean is episode else clean

    def redacted_episode(self, episode: ep.Episode) -> ep.Episode:
        """Like ``redact_episode``, but ``episode`` itself (no copy) when nothing was replaced: for a
        caller that only serialises the result, such as a store's insert."""
        if episode._redacted_by is self:
            return episode  # marked by its owner as this redactor's output (``mark_redacted``)
        run = self._pass_for(_episode_strings(episode))
        if run is None:
            return episode
        update = run.episode(episode)
        if not run.counts:
            return episode
        totals = dict(episode.redactions)
        for kind, n in run.counts.items():
            totals[kind] = totals.get(kind, 0) + n
        update["redactions"] = totals
        return episode.model_copy(update=update)

    def mark_redacted(self, episode: ep.Episode) -> ep.Episode:
        """``episode`` redacted, as a copy marked so that this redactor does not scan it again (the
        collector redacts before deriving an id, then its store would redact once more). Only for
        an owner that changes the copy no further: a marked episode is written as it is."""
        clean = self.redacted_episode(episode)
        marked = episode.model_copy() if clean is episode else clean
        marked._redacted_by = self
        return marked
