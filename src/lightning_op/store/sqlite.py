"""The embedded episode store: one SQLite file, the default for the CLI, the demo and the collector.

Implements ``store.base.EpisodeStore``; opened by ``store.open_store("sqlite:///...")``. The collector
writes here, the CLI, labeling and dataset building read and label through the same protocol.
Every episode passes through ``redaction.Redactor`` before it is written, so no raw value reaches
the file.

Layout: ``episodes`` keeps each episode as its JSON document (exactly ``Episode.to_json_dict()``)
plus the columns queries filter and sort on (agent, timestamp in microseconds, labeled, reward,
model version, revision); ``records`` keeps small named JSON documents. ``seq`` (the rowid) breaks
timestamp ties, so ``(ts, seq)`` orders every episode and is the keyset of the cursors. Batches of
labels (``add_labels``) are applied to the stored JSON with orjson, without validating each episode
again; ``add_label`` goes through the model, and a test holds the two to the same result.

Concurrency: writer processes take turns (the collector adds episodes; the operator or the CLI add
labels) and any number of processes read. The file is in WAL mode, so readers never block a writer
nor each other; writes take the write lock up front (``BEGIN IMMEDIATE``), in short transactions,
and wait up to ``busy_timeout_s`` for it (the URL's ``?timeout=``). A lock held longer,
a full disk or an I/O error becomes ``StoreUnavailableError`` with a message saying which.
Within a process one connection is shared by all threads behind a lock. Long reads
(``iter_episodes``, ``iter_json``) page by keyset in short statements, so no read transaction
stays open for minutes and the WAL can be checkpointed while a dataset is built.

The schema is versioned with ``PRAGMA user_version``; ``MIGRATIONS`` lists the steps and opening
a store applies the missing ones in one transaction.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import os
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from lightning_op.api import episode as ep
from lightning_op.store import base
from lightning_op.store import redaction as redaction_mod

logger = logging.getLogger(__name__)

URL_PREFIX = "sqlite://"
MEMORY = ":memory:"
DEFAULT_PAGE_SIZE = 100
DEFAULT_BUSY_TIMEOUT_S = 10.0
SYNCHRONOUS_MODES = ("NORMAL", "FULL")
# Ids per "SELECT ... WHERE id IN (...)" when looking for duplicates (SQLite allows 32766 variables).
_ID_CHUNK = 500
# Rows per DELETE when purging, each in its own transaction so the collector is not held up.
_PURGE_CHUNK = 5000

# Each step moves the schema from version i to i + 1. Never edit a released step; append a new one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: episodes with their indexed columns; named records.
    (
        """CREATE TABLE episodes (
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            agent_id TEXT NOT NULL,
            ts INTEGER NOT NULL,
            labeled INTEGER NOT NULL DEFAULT 0,
            reward REAL,
            model_version TEXT,
            revision INTEGER NOT NULL DEFAULT 1,
            doc TEXT NOT NULL
        )""",
        "CREATE INDEX episodes_agent_ts ON episodes (agent_id, ts)",
        "CREATE INDEX episodes_ts ON episodes (ts)",
        """CREATE TABLE records (
            kind TEXT NOT NULL,
            name TEXT NOT NULL,
            revision INTEGER NOT NULL,
            updated_at INTEGER NOT NULL,
            data TEXT NOT NULL,
            PRIMARY KEY (kind, name)
        ) WITHOUT ROWID""",
    ),
    # 2: labeling selects unlabeled episodes of an agent, datasets the labeled ones, counts both.
    ("CREATE INDEX episodes_agent_labeled_ts ON episodes (agent_id, labeled, ts)",),
)
SCHEMA_VERSION = len(MIGRATIONS)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_COLUMNS = "id, agent_id, ts, labeled, reward, model_version, revision, doc"


def _micros(value: datetime) -> int:
    """Microseconds since the epoch, exactly (naive datetimes are taken as UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // _MICROSECOND


def _from_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def _episode_doc(episode: ep.Episode) -> str:
    """The stored JSON: what ``Episode.to_json_dict()`` gives, serialised by pydantic's core."""
    doc = episode.model_dump_json(by_alias=True, exclude_none=True)
    if episode.reward is None:
        # to_json_dict keeps "reward": null (scripts rely on the key); exclude_none dropped it.
        doc = doc[:-1] + ',"reward":null}'
    return doc


def _new_episode_doc(episode: ep.Episode, labeled: bool) -> str:
    """``_episode_doc`` of ``episode`` as inserted (revision 1, ``labeled``), without copying the model:
    ``revision`` is the model's last field, so its value is replaced at the end of the text."""
    if labeled == episode.labeled:
        doc = _episode_doc(episode)
        old = f',"revision":{episode.revision}'
        end = len(doc) - 1 if episode.reward is not None else len(doc) - len(',"reward":null}')
        if doc.startswith(old, end - len(old)):
            return f'{doc[: end - len(old)]},"revision":1{doc[end:]}'
    return _episode_doc(episode.model_copy(update={"revision": 1, "labeled": labeled}))


def _check_size(episode_id: str, doc: str) -> None:
    """Refuse an episode whose stored document is over ``MAX_EPISODE_BYTES`` of UTF-8 (each field
    within its own limit can still add up to several MiB): Cosmos DB refuses items over 2 MB, and
    one such row makes every page that holds it slow to read. Encodes only a document that might
    be over (a character is at most 4 bytes)."""
    if len(doc) * 4 <= ep.MAX_EPISODE_BYTES:
        return
    size = len(doc.encode())
    if size > ep.MAX_EPISODE_BYTES:
        raise ValueError(
            f"episode {episode_id!r} is {size:,} bytes as stored, over the limit of "
            f"{ep.MAX_EPISODE_BYTES:,} bytes (1 MiB) for one episode: send fewer or shorter messages, "
            "tool results or metadata"
        )


def _labeled_episode(
    episode: ep.Episode, revision: int, label: ep.Label, counts: dict[str, int]
) -> ep.Episode:
    """``episode`` (stored at ``revision``) with ``label`` (already redacted) appended: at most
    ``MAX_LABELS`` labels, reward and labeled recomputed, redaction counts added, revision bumped."""
    labels = [*episode.labels, label]
    while len(labels) > ep.MAX_LABELS:
        drop = next((i for i, old in enumerate(labels[:-1]) if not old.manual), 0)
        del labels[drop]
    # A reward the client sent without labels stands until a label gives a score.
    reward = base.effective_reward(labels)
    if reward is None:
        reward = episode.reward
    redactions = dict(episode.redactions)
    for kind, n in counts.items():
        redactions[kind] = redactions.get(kind, 0) + n
    return episode.model_copy(
        update={
            "labels": labels,
            "reward": reward,
            "labeled": reward is not None,
            "revision": revision + 1,
            "redactions": redactions,
        }
    )


_dump_label = ep.Label.model_dump
# Label redactions remembered per store, by (reason, error), for texts of at most this many characters.
_LABEL_CACHE_SIZE = 4096
_LABEL_CACHE_MAX_CHARS = 2048
# Every digit as '0', everything else as ' ': a run of 19 zeros is an integer orjson may not keep.
_DIGIT_RUNS = bytes(0x30 if 0x30 <= i <= 0x39 else 0x20 for i in range(256))
_LONG_DIGIT_RUN = b"0" * 19


class _CleanLabel(NamedTuple):
    """A label after redaction, ready for either path of ``add_labels``."""

    original: ep.Label
    reason: str
    error: str | None
    #: what the stored document holds: ``to_json_dict()`` of the redacted label
    data: dict[str, Any]
    #: redactions made, by kind (shared between labels with the same texts: read only)
    counts: dict[str, int]

    def model(self) -> ep.Label:
        label = self.original
        if self.reason is label.reason and self.error is label.error:
            return label.model_copy()
        return label.model_copy(update={"reason": self.reason, "error": self.error})


def _parse_doc(doc: str) -> dict[str, Any] | None:
    """The stored document as a dict, or None when the JSON path cannot label it exactly.

    orjson reads an integer beyond 64 bits as a float (pydantic keeps it) and refuses lone
    surrogates; documents not shaped as this store writes them are left to pydantic too.
    """
    raw = doc.encode("utf-8", "surrogatepass")
    if _LONG_DIGIT_RUN in raw.translate(_DIGIT_RUNS):
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(data) is not dict:
        return None
    labels = data.get("labels")
    if type(labels) is not list or type(data.get("redactions")) is not dict:
        return None
    if not all(type(label) is dict for label in labels):
        return None
    return data


def _stored_reward(labels: list[dict[str, Any]]) -> Any:
    """``base.effective_reward`` on stored label dicts: the newest manual scored label's score, else
    the newest scored label's, else None."""
    newest = None
    for label in reversed(labels):
        score = label.get("score")
        if score is None:
            continue
        if label.get("manual"):
            return score
        if newest is None:
            newest = score
    return newest


class _StoredEpisode:
    """One episode a batch of labels touches: its row, parsed on the first label, updated per label.

    The JSON path mirrors ``_labeled_episode`` on the stored dict (the document is what
    ``_episode_doc`` wrote from a validated episode, so dict and model agree). A document it cannot
    read exactly (see ``_parse_doc``) goes through ``_labeled_episode`` instead, which validates it
    and so raises, as ``add_label`` does, if it is not a valid episode.
    """

    __slots__ = ("seq", "revision", "doc", "data", "model", "labeled", "reward")

    def __init__(self, seq: int, revision: int, doc: str) -> None:
        self.seq = seq
        self.revision = revision
        self.doc = doc
        self.data: dict[str, Any] | None = None
        self.model: ep.Episode | None = None
        self.labeled = False
        self.reward: Any = None

    def append(self, label: _CleanLabel) -> None:
        if self.data is None and self.model is None:
            self.data = _parse_doc(self.doc)
            if self.data is None:
                self.model = ep.Episode.model_validate_json(self.doc)
        data = self.data
        if data is None:
            assert self.model is not None
            self.model = _labeled_episode(self.model, self.revision, label.model(), label.counts)
            self.reward, self.labeled = self.model.reward, self.model.labeled
            self.revision += 1
            return
        labels: list[dict[str, Any]] = data["labels"]
        labels.append(label.data)
        while len(labels) > ep.MAX_LABELS:
            drop = next((i for i in range(len(labels) - 1) if not labels[i].get("manual")), 0)
            del labels[drop]
        reward = _stored_reward(labels)
        if reward is None:
            reward = data.get("reward")
        self.revision += 1
        self.reward, self.labeled = reward, reward is not None
        data["reward"] = reward
        data["labeled"] = self.labeled
        data["revision"] = self.revision
        if label.counts:
            redactions: dict[str, int] = data["redactions"]
            for kind, n in label.counts.items():
                redactions[kind] = redactions.get(kind, 0) + n

    def row(self) -> tuple[Any, ...]:
        """``labeled, reward, revision, doc, seq`` for the UPDATE."""
        if self.data is not None:
            doc = orjson.dumps(self.data).decode()
        else:
            assert self.model is not None
            doc = _episode_doc(self.model)
        return (int(self.labeled), self.reward, self.revision, doc, self.seq)


@dataclass(frozen=True)
class _Keyset:
    ts: int
    seq: int


def _encode_cursor(key: _Keyset) -> str:
    return base64.urlsafe_b64encode(f"d1:{key.ts}:{key.seq}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> _Keyset:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        tag, ts, seq = raw.split(":")
        if tag != "d1":
            raise ValueError(tag)
        return _Keyset(int(ts), int(seq))
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise ValueError(
            f"invalid cursor {cursor[:40]!r}: pass the next_cursor of a previous page unchanged"
        ) from exc


def _where(q: base.EpisodeQuery) -> tuple[list[str], list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if q.agent_id is not None:
        clauses.append("agent_id = ?")
        params.append(q.agent_id)
    if q.labeled is not None:
        clauses.append("labeled = ?")
        params.append(int(q.labeled))
    if q.since is not None:
        clauses.append("ts >= ?")
        params.append(_micros(q.since))
    if q.until is not None:
        clauses.append("ts < ?")
        params.append(_micros(q.until))
    if q.min_reward is not None:
        if not math.isfinite(q.min_reward):
            raise ValueError(f"min_reward must be a finite number, got {q.min_reward!r}")
        clauses.append("reward >= ?")
        params.append(float(q.min_reward))
    if q.model_version is not None:
        clauses.append("model_version = ?")
        params.append(q.model_version)
    return clauses, params


def _page_sql(where: str, newest_first: bool, after: bool) -> str:
    """A page of ``(seq, ts, doc)`` in keyset order, after the key ``(ts, seq)`` when ``after``.

    Parameters: ``where``'s, then ``ts, seq, n`` and ``where``'s again, ``ts, n, n`` when ``after``,
    else ``n``. The key is split into "same timestamp, later seq" and "later timestamp" so both
    parts are index seeks, however many episodes share one timestamp.
    """
    order = "DESC" if newest_first else "ASC"
    beyond = "<" if newest_first else ">"
    select = "SELECT seq, ts, doc FROM episodes WHERE"
    if not after:
        return f"{select} {where} ORDER BY ts {order}, seq {order} LIMIT ?"
    same_ts = f"{select} {where} AND ts = ? AND seq {beyond} ? ORDER BY seq {order} LIMIT ?"
    later_ts = f"{select} {where} AND ts {beyond} ? ORDER BY ts {order}, seq {order} LIMIT ?"
    return f"SELECT * FROM ({same_ts}) UNION ALL SELECT * FROM ({later_ts}) LIMIT ?"


def _check_limit(limit: int | None, what: str) -> None:
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"{what} must be a positive integer, got {limit!r}")


def migrate(conn: sqlite3.Connection, target: int = SCHEMA_VERSION) -> int:
    """Bring the schema of ``conn``'s database to version ``target``; returns the version before.

    Runs in one ``BEGIN IMMEDIATE`` transaction, so two processes opening a new file at once do not
    both create tables. ``conn`` must be in autocommit mode (``isolation_level=None``).
    """
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise base.StoreError(
            f"the database has schema version {version}, newer than this lightning-op supports "
            f"({SCHEMA_VERSION}); upgrade lightning-op"
        )
    if version >= target:
        return version
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        for step in range(version, target):
            for statement in MIGRATIONS[step]:
                conn.execute(statement)
            logger.info("episode store schema migrated to version %d", step + 1)
        conn.execute(f"PRAGMA user_version = {max(version, target)}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return version


class MissingStoreError(base.StoreError):
    """The store file to open without creating it is not there."""


def _url_timeout(url: str, options: str, default: float) -> float:
    """The ``timeout`` option of a SQLite URL's query (seconds, > 0), or ``default`` without one."""
    if not options:
        return default
    parsed: dict[str, list[str]] = {}
    for part in options.split("&"):
        name, _, value = part.partition("=")
        parsed.setdefault(urllib.parse.unquote(name), []).append(urllib.parse.unquote(value))
    unknown = sorted(set(parsed) - {"timeout"})
    if unknown:
        raise base.StoreError(
            f"SQLite URL {url!r}: unknown option {', '.join(repr(name) for name in unknown)}; the only "
            "option is timeout=SECONDS (write a '?' in a file name as %3F)"
        )
    values = parsed["timeout"]
    try:
        seconds = float(values[-1])
    except ValueError:
        seconds = math.nan
    if len(values) != 1 or not math.isfinite(seconds) or seconds <= 0:
        raise base.StoreError(
            f"SQLite URL {url!r}: timeout must be one number of seconds above 0, got "
            f"{', '.join(repr(v) for v in values)}"
        )
    return seconds


class SQLiteStore:
    """``EpisodeStore`` on one SQLite file (or in memory); see the module docstring."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        redactor: redaction_mod.Redactor | None = None,
        busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
        synchronous: str = "NORMAL",
        url: str | None = None,
        create: bool = True,
    ) -> None:
        """``synchronous``: ``NORMAL`` (default; a commit survives the process being killed) or
        ``FULL`` (fsync at every commit; also survives power loss, at the disk's sync rate).
        ``create=False`` opens an existing file only (``MissingStoreError`` when there is none), for
        commands that read or label a store someone else filled: a typo in the path must not leave
        an empty database behind and answer "nothing found"."""
        if synchronous.upper() not in SYNCHRONOUS_MODES:
            raise ValueError(
                f"synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}, got {synchronous!r}"
            )
        self.path: Path | None = None if str(path) == MEMORY else Path(path).expanduser()
        self.url = url or f"{URL_PREFIX}/{MEMORY if self.path is None else self.path}"
        self.busy_timeout_s = busy_timeout_s
        self.synchronous = synchronous.upper()
        self._redactor = redactor if redactor is not None else redaction_mod.Redactor.default()
        self._lock = threading.RLock()
        self._label_redactions: dict[tuple[str, str | None], tuple[str, str | None, dict[str, int]]] = {}
        self._closed = False
        self._create = create
        self._conn = self._connect()

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        redactor: redaction_mod.Redactor | None = None,
        busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
        synchronous: str = "NORMAL",
        create: bool = True,
    ) -> SQLiteStore:
        """Open ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` or ``sqlite:///:memory:``.

        The path is what follows ``sqlite:///`` (so an absolute path gives four slashes), percent-
        decoded (``%20``); ``~`` is expanded and missing parent directories are created (with
        ``create=False``, a missing file is a ``MissingStoreError`` instead). One option may follow
        the path: ``?timeout=SECONDS``, how long a write waits for another connection's write lock
        before it fails with ``StoreUnavailableError`` (default ``busy_timeout_s``), as in
        ``sqlite3.connect(timeout=...)``.
        """
        if not url.startswith(URL_PREFIX + "/"):
            raise base.StoreError(
                f"unsupported SQLite URL {url!r}: use sqlite:///relative/path.db, "
                "sqlite:////absolute/path.db or sqlite:///:memory:"
            )
        raw_path, _, options = url[len(URL_PREFIX) + 1 :].partition("?")
        busy_timeout_s = _url_timeout(url, options, busy_timeout_s)
        path = urllib.parse.unquote(raw_path)
        if not path:
            raise base.StoreError(f"SQLite URL {url!r} names no file: use sqlite:////absolute/path.db")
        return cls(
            path,
            redactor=redactor,
            busy_timeout_s=busy_timeout_s,
            synchronous=synchronous,
            url=url,
            create=create,
        )

    # --- connection and errors ---------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        target = MEMORY
        uri = False
        if self.path is not None and not self._create:
            if not self.path.exists():
                raise MissingStoreError(
                    f"store file {self.path} does not exist: check --store (the collector creates "
                    "the store when it starts)"
                )
            if not self.path.is_file():
                raise base.StoreError(f"store file {self.path} is not a file: check --store")
            # mode=rw: a file removed since the check is an error, not a new empty database.
            target = f"file:{urllib.parse.quote(str(self.path))}?mode=rw"
            uri = True
        elif self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # Episodes are private even when redacted: create the file for its owner only
                # (SQLite gives the -wal and -shm files the same permissions).
                if not self.path.exists():
                    os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            except FileExistsError:
                pass
            except OSError as exc:
                raise base.StoreUnavailableError(
                    f"SQLite store {self.path}: cannot create the file: {exc.strerror or exc}; "
                    "check the directory exists and is writable"
                ) from exc
            target = str(self.path)
        try:
            conn = sqlite3.connect(
                target,
                uri=uri,
                timeout=self.busy_timeout_s,
                isolation_level=None,
                check_same_thread=False,
                cached_statements=256,
            )
        except sqlite3.Error as exc:
            raise self._error(exc, "opening the database") from exc
        try:
            if self.path is not None:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise base.StoreError(
                        f"SQLite store {self.path}: cannot switch to WAL mode (got {mode!r}); "
                        "the file must be on a local filesystem"
                    )
            # NORMAL (the default) in WAL mode syncs the WAL at checkpoints, not at every commit. A
            # commit is in the WAL file (the OS page cache) before it returns, so it survives the
            # process being killed (kill -9, OOM): the kernel still writes the pages out and the next
            # open replays the WAL. What NORMAL gives up is power loss or a kernel crash: commits
            # since the last checkpoint may roll back (the file stays consistent). FULL fsyncs every
            # commit, which caps a writer at the disk's sync rate unless it batches.
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
            conn.execute("PRAGMA cache_size=-32768")
            conn.execute("PRAGMA temp_store=MEMORY")
            migrate(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise self._error(exc, "opening the database") from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _where_am_i(self) -> str:
        return f"SQLite store {self.path if self.path is not None else MEMORY}"

    def _error(self, exc: sqlite3.Error, action: str) -> base.StoreError:
        """The store error for a sqlite3 error, with a message that says what to do."""
        name = getattr(exc, "sqlite_errorname", "") or ""
        where = self._where_am_i()
        if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in str(exc):
            return base.StoreUnavailableError(
                f"{where}: database is locked: another connection held the write lock for more than "
                f"{self.busy_timeout_s:g}s while {action}; retry later, or let writes wait longer "
                "with ?timeout=SECONDS on the store URL (writers take turns: the collector adds "
                "episodes, labeling adds labels)"
            )
        if name.startswith("SQLITE_FULL") or "disk is full" in str(exc):
            return base.StoreUnavailableError(
                f"{where}: database or disk is full while {action}; free disk space or purge old "
                "episodes (retention.ttlDays), then retry"
            )
        if name.startswith("SQLITE_IOERR") or "disk I/O error" in str(exc):
            return base.StoreUnavailableError(
                f"{where}: disk I/O error while {action} ({exc}); check the volume, then retry"
            )
        if name.startswith("SQLITE_READONLY"):
            return base.StoreUnavailableError(
                f"{where}: the database is read-only while {action}; check the permissions of the "
                "file and of its directory (SQLite writes -wal and -shm files beside it)"
            )
        if name.startswith("SQLITE_CANTOPEN"):
            return base.StoreUnavailableError(
                f"{where}: cannot open the database file while {action}; check the path and permissions"
            )
        if name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")):
            return base.StoreError(
                f"{where}: the file is not a SQLite database or is corrupt ({exc}); point --store at "
                "another file or restore a backup"
            )
        if isinstance(exc, sqlite3.ProgrammingError) and "closed" in str(exc):
            return base.StoreError(f"{where}: the store is closed")
        return base.StoreError(f"{where}: {action} failed: {exc}")

    @contextmanager
    def _reading(self, action: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._check_open()
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise self._error(exc, action) from exc

    @contextmanager
    def _writing(self, action: str) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding the database's write lock from its start."""
        with self._lock:
            self._check_open()
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._error(exc, action) from exc
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        logger.warning("%s: rollback after a failed %s failed", self._where_am_i(), action)
                if isinstance(exc, sqlite3.Error):
                    raise self._error(exc, action) from exc
                raise

    def _check_open(self) -> None:
        if self._closed:
            raise base.StoreError(f"{self._where_am_i()}: the store is closed")

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SQLiteStore({self.url!r})"

    # --- episodes: writes --------------------------------------------------------------------

    def insert_many(self, episodes: Sequence[ep.Episode]) -> base.InsertResult:
        """Redact and insert a batch in one transaction; ids already stored (or repeated in the
        batch) are reported as duplicates and left unchanged. Inserted episodes get revision 1.
        """
        result = base.InsertResult()
        if not episodes:
            return result
        # Redact and serialise before taking the write lock, to hold it as briefly as possible.
        rows: list[tuple[Any, ...]] = []
        redacted = self._redactor.redacted_episode
        for episode in episodes:
            clean = redacted(episode)
            reward = base.insert_reward(clean)
            if reward != clean.reward:
                clean = clean.model_copy(update={"reward": reward})
            labeled = reward is not None
            doc = _new_episode_doc(clean, labeled)
            _check_size(clean.id, doc)
            rows.append(
                (
                    clean.id,
                    clean.agent_id,
                    _micros(clean.timestamp),
                    int(labeled),
                    clean.reward,
                    clean.model_version,
                    1,
                    doc,
                )
            )
        ids = [row[0] for row in rows]
        with self._writing(f"inserting {len(rows)} episodes") as conn:
            existing: set[str] = set()
            for start in range(0, len(ids), _ID_CHUNK):
                chunk = ids[start : start + _ID_CHUNK]
                marks = ",".join("?" * len(chunk))
                existing.update(
                    r[0] for r in conn.execute(f"SELECT id FROM episodes WHERE id IN ({marks})", chunk)
                )
            new_rows = []
            for row in rows:
                episode_id = row[0]
                if episode_id in existing:
                    result.duplicates.append(episode_id)
                else:
                    existing.add(episode_id)
                    result.accepted.append(episode_id)
                    new_rows.append(row)
            conn.executemany(f"INSERT INTO episodes ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", new_rows)
        return result

    def add_label(self, episode_id: str, label: ep.Label, expected_revision: int | None = None) -> ep.Episode:
        """Append a (redacted) label, recompute ``reward``/``labeled``, bump ``revision``.

        With ``expected_revision`` a concurrent change makes it raise ``ConflictError`` and write
        nothing. An episode keeps at most ``episode.MAX_LABELS`` labels: beyond that the oldest
        earlier automatic label is dropped (the oldest label if all earlier ones are manual).
        """
        counts: dict[str, int] = {}
        clean_label = self._redactor.redact_label(label, counts)
        with self._writing(f"labeling episode {episode_id}") as conn:
            return self._append_label(conn, episode_id, clean_label, counts, expected_revision)

    def _append_label(
        self,
        conn: sqlite3.Connection,
        episode_id: str,
        label: ep.Label,
        counts: dict[str, int],
        expected_revision: int | None,
    ) -> ep.Episode:
        """Inside a write transaction: check the revision, append ``label`` (already redacted), write."""
        row = conn.execute("SELECT revision, doc FROM episodes WHERE id = ?", (episode_id,)).fetchone()
        if row is None:
            raise base.NotFoundError(f"episode {episode_id!r} not found in {self.url}")
        revision, doc = int(row[0]), row[1]
        if expected_revision is not None and revision != expected_revision:
            raise base.ConflictError(
                f"episode {episode_id!r} changed: revision is {revision}, expected "
                f"{expected_revision}; re-read it and retry"
            )
        updated = _labeled_episode(ep.Episode.model_validate_json(doc), revision, label, counts)
        conn.execute(
            "UPDATE episodes SET labeled = ?, reward = ?, revision = ?, doc = ? WHERE id = ?",
            (int(updated.labeled), updated.reward, updated.revision, _episode_doc(updated), episode_id),
        )
        return updated

    def _clean_label(self, label: ep.Label) -> _CleanLabel:
        """``label`` redacted, as the dict its stored document holds, with the redaction counts.

        Redaction depends only on the texts, and a grader gives the same few reasons to thousands of
        episodes, so results are remembered by ``(reason, error)`` (short texts only, a bounded number).
        """
        key = (label.reason, label.error)
        hit = self._label_redactions.get(key)
        if hit is None:
            counts: dict[str, int] = {}
            clean = self._redactor.redact_label(label, counts)
            hit = (clean.reason, clean.error, counts)
            if len(label.reason) + len(label.error or "") <= _LABEL_CACHE_MAX_CHARS:
                if len(self._label_redactions) >= _LABEL_CACHE_SIZE:
                    self._label_redactions.clear()
                self._label_redactions[key] = hit
        reason, error, counts = hit
        data = _dump_label(label, mode="json", by_alias=True, exclude_none=True)
        data["reason"] = reason
        if error is not None:
            data["error"] = error
        return _CleanLabel(label, reason, error, data, counts)

    def add_labels(self, updates: Sequence[base.LabelUpdate]) -> list[base.LabelWriteStatus]:
        """``base.BatchLabelWriter``: every update in ONE transaction, each as ``add_label`` would do it;
        a stale ``expected_revision`` gives ``CONFLICT`` and a missing episode ``NOT_FOUND`` for that
        update only. If it raises, nothing was written.

        Works on the stored JSON rather than on models (``add_label`` re-validates the whole episode,
        copies and re-serialises it, which was most of the cost of labeling with a rule grader): one
        ``SELECT ... IN`` per chunk of ids, each document parsed once however many of the batch's
        updates it gets, labels appended as dicts, one ``executemany`` UPDATE. A document orjson
        cannot read back exactly takes ``add_label``'s path (see ``_StoredEpisode``).
        """
        if not updates:
            return []
        # Redact and dump the labels before taking the write lock, to hold it as briefly as possible.
        labels = [self._clean_label(update.label) for update in updates]
        # Each episode's updates in input order; every one is NOT_FOUND until its row turns up.
        by_id: dict[str, list[int]] = {}
        for index, update in enumerate(updates):
            by_id.setdefault(update.episode_id, []).append(index)
        statuses = [base.LabelWriteStatus.NOT_FOUND] * len(updates)
        ids = list(by_id)
        rows: list[tuple[Any, ...]] = []
        with self._writing(f"labeling {len(updates)} episodes") as conn:
            for start in range(0, len(ids), _ID_CHUNK):
                chunk = ids[start : start + _ID_CHUNK]
                marks = ",".join("?" * len(chunk))
                sql = f"SELECT seq, id, revision, doc FROM episodes WHERE id IN ({marks})"
                # Each document is parsed, labeled and dumped before the next row is read, so parsed
                # documents die young instead of filling the garbage collector's old generation
                # (whose full collections cost more than the parsing).
                for seq, episode_id, revision, doc in conn.execute(sql, chunk):
                    target = _StoredEpisode(seq, int(revision), doc)
                    for index in by_id[episode_id]:
                        expected = updates[index].expected_revision
                        if expected is not None and expected != target.revision:
                            statuses[index] = base.LabelWriteStatus.CONFLICT
                        else:
                            target.append(labels[index])
                            statuses[index] = base.LabelWriteStatus.APPLIED
                    if target.revision != revision:
                        rows.append(target.row())
            if rows:
                conn.executemany(
                    "UPDATE episodes SET labeled = ?, reward = ?, revision = ?, doc = ? WHERE seq = ?", rows
                )
        return statuses

    def purge_older_than(self, cutoff: datetime, agent_id: str | None = None) -> int:
        """Delete episodes with a timestamp before ``cutoff``, in short transactions; returns how many.

        The file does not shrink (SQLite reuses the freed pages for new episodes).
        """
        clause = "ts < ?" + (" AND agent_id = ?" if agent_id is not None else "")
        params: list[Any] = [_micros(cutoff)] + ([agent_id] if agent_id is not None else [])
        total = 0
        while True:
            with self._writing("purging old episodes") as conn:
                deleted = conn.execute(
                    f"DELETE FROM episodes WHERE seq IN (SELECT seq FROM episodes WHERE {clause} LIMIT ?)",
                    [*params, _PURGE_CHUNK],
                ).rowcount
            total += deleted
            if deleted < _PURGE_CHUNK:
                break
        if total:
            logger.info("%s: purged %d episodes older than %s", self._where_am_i(), total, cutoff.isoformat())
        return total

    # --- episodes: reads ---------------------------------------------------------------------

    def get(self, episode_id: str) -> ep.Episode | None:
        with self._reading(f"reading episode {episode_id}") as conn:
            row = conn.execute("SELECT doc FROM episodes WHERE id = ?", (episode_id,)).fetchone()
        return None if row is None else ep.Episode.model_validate_json(row[0])

    def query(self, q: base.EpisodeQuery) -> base.Page:
        """One page, newest first (timestamp, then insertion order); ``q.limit`` items (default 100)."""
        _check_limit(q.limit, "limit")
        limit = q.limit or DEFAULT_PAGE_SIZE
        clauses, params = _where(q)
        where = " AND ".join(clauses) or "1"
        n = limit + 1
        if q.cursor:
            key = _decode_cursor(q.cursor)
            sql = _page_sql(where, newest_first=True, after=True)
            args = [*params, key.ts, key.seq, n, *params, key.ts, n, n]
        else:
            sql = _page_sql(where, newest_first=True, after=False)
            args = [*params, n]
        with self._reading("querying episodes") as conn:
            rows = conn.execute(sql, args).fetchall()
        page = rows[:limit]
        items = [ep.Episode.model_validate_json(doc) for _, _, doc in page]
        next_cursor = _encode_cursor(_Keyset(page[-1][1], page[-1][0])) if len(rows) > limit else None
        return base.Page(items=items, next_cursor=next_cursor)

    def _doc_batches(self, q: base.EpisodeQuery, batch_size: int) -> Iterator[list[str]]:
        """Documents of matching episodes, oldest first, ``batch_size`` per statement (keyset paging)."""
        _check_limit(q.limit, "limit")
        _check_limit(batch_size, "batch_size")
        if q.cursor:
            raise ValueError(
                "iter_episodes/iter_json read oldest first and take no cursor (cursors come from "
                "query(), newest first); narrow the range with since/until instead"
            )
        clauses, params = _where(q)
        where = " AND ".join(clauses) or "1"
        first_sql = _page_sql(where, newest_first=False, after=False)
        next_sql = _page_sql(where, newest_first=False, after=True)
        last: _Keyset | None = None
        remaining = q.limit
        while remaining is None or remaining > 0:
            size = batch_size if remaining is None else min(batch_size, remaining)
            if last is None:
                sql, args = first_sql, [*params, size]
            else:
                sql, args = next_sql, [*params, last.ts, last.seq, size, *params, last.ts, size, size]
            with self._reading("iterating episodes") as conn:
                rows = conn.execute(sql, args).fetchall()
            if not rows:
                return
            last = _Keyset(rows[-1][1], rows[-1][0])
            if remaining is not None:
                remaining -= len(rows)
            yield [row[2] for row in rows]
            if len(rows) < size:
                return

    def iter_episodes(self, q: base.EpisodeQuery, batch_size: int = 1000) -> Iterator[ep.Episode]:
        """Every matching episode, oldest first, in constant memory; ``q.limit`` caps the total.

        Episodes inserted meanwhile appear if they sort after the current position.
        """
        validate = ep.Episode.model_validate_json
        for docs in self._doc_batches(q, batch_size):
            for doc in docs:
                yield validate(doc)

    def iter_json(self, q: base.EpisodeQuery, batch_size: int = 5000) -> Iterator[dict[str, Any]]:
        """Like ``iter_episodes`` but yields the stored ``to_json_dict()`` dicts, without pydantic."""
        loads = orjson.loads
        for docs in self._doc_batches(q, batch_size):
            yield from map(loads, docs)

    def count(self, agent_id: str | None = None, labeled: bool | None = None) -> int:
        clauses, params = _where(base.EpisodeQuery(agent_id=agent_id, labeled=labeled))
        where = " AND ".join(clauses) or "1"
        with self._reading("counting episodes") as conn:
            return int(conn.execute(f"SELECT COUNT(*) FROM episodes WHERE {where}", params).fetchone()[0])

    def reward_stats(
        self, agent_id: str | None = None, since: datetime | None = None, model_version: str | None = None
    ) -> base.RewardStats:
        """Counts of all and labeled episodes; mean, population std, min and max of the rewards."""
        clauses, params = _where(
            base.EpisodeQuery(agent_id=agent_id, since=since, model_version=model_version)
        )
        where = " AND ".join(clauses) or "1"
        sql = (
            "SELECT COUNT(*), COALESCE(SUM(labeled), 0), COUNT(reward), AVG(reward), AVG(reward * reward), "
            f"MIN(reward), MAX(reward), MAX(ts) FROM episodes WHERE {where}"
        )
        with self._reading("computing reward statistics") as conn:
            count, labeled, rewarded, mean, mean_sq, low, high, last_ts = conn.execute(sql, params).fetchone()
        std: float | None = None
        if rewarded:
            variance = mean_sq - mean * mean
            # Rounding leaves a tiny (even negative) variance for equal rewards; that is zero.
            std = math.sqrt(variance) if variance > 1e-12 else 0.0
        return base.RewardStats(
            count=int(count),
            labeled=int(labeled),
            mean=mean,
            std=std,
            min=low,
            max=high,
            last_timestamp=None if last_ts is None else _from_micros(int(last_ts)),
        )

    def agents(self) -> list[str]:
        """Agent ids with at least one episode, sorted; one index seek per agent."""
        sql = (
            "WITH RECURSIVE a(id) AS ("
            " SELECT MIN(agent_id) FROM episodes"
            " UNION ALL SELECT (SELECT MIN(agent_id) FROM episodes WHERE agent_id > a.id) FROM a"
            " WHERE a.id IS NOT NULL"
            ") SELECT id FROM a WHERE id IS NOT NULL"
        )
        with self._reading("listing agents") as conn:
            return [row[0] for row in conn.execute(sql)]

    # --- records -----------------------------------------------------------------------------

    def put_record(
        self, kind: str, name: str, data: dict[str, Any], expected_revision: int | None = None
    ) -> base.Record:
        """Create or replace a record. ``expected_revision``: 0 means it must not exist yet, n > 0
        that it must be at revision n; otherwise ``ConflictError`` and nothing is written."""
        for field_name, value in (("kind", kind), ("name", name)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"record {field_name} must be a non-empty string, got {value!r}")
        if not isinstance(data, dict):
            raise ValueError(f"record {kind}/{name}: data must be a JSON object, got {type(data).__name__}")
        try:
            encoded = orjson.dumps(data).decode()
        except TypeError as exc:
            raise ValueError(f"record {kind}/{name}: data is not JSON-serialisable: {exc}") from exc
        now = datetime.now(UTC)
        with self._writing(f"writing record {kind}/{name}") as conn:
            row = conn.execute(
                "SELECT revision FROM records WHERE kind = ? AND name = ?", (kind, name)
            ).fetchone()
            current = 0 if row is None else int(row[0])
            if expected_revision is not None and current != expected_revision:
                state = "does not exist" if row is None else f"is at revision {current}"
                raise base.ConflictError(
                    f"record {kind}/{name} {state}, expected "
                    f"{'none' if expected_revision == 0 else f'revision {expected_revision}'}; "
                    "re-read it and retry"
                )
            conn.execute(
                "INSERT INTO records (kind, name, revision, updated_at, data) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (kind, name) DO UPDATE SET revision = excluded.revision, "
                "updated_at = excluded.updated_at, data = excluded.data",
                (kind, name, current + 1, _micros(now), encoded),
            )
        return base.Record(
            kind=kind, name=name, data=orjson.loads(encoded), revision=current + 1, updated_at=now
        )

    def get_record(self, kind: str, name: str) -> base.Record | None:
        with self._reading(f"reading record {kind}/{name}") as conn:
            row = conn.execute(
                "SELECT kind, name, data, revision, updated_at FROM records WHERE kind = ? AND name = ?",
                (kind, name),
            ).fetchone()
        return None if row is None else _record(row)

    def list_records(self, kind: str) -> list[base.Record]:
        """Records of one kind, by name."""
        with self._reading(f"listing records of kind {kind}") as conn:
            rows = conn.execute(
                "SELECT kind, name, data, revision, updated_at FROM records WHERE kind = ? ORDER BY name",
                (kind,),
            ).fetchall()
        return [_record(row) for row in rows]


def _record(row: tuple[Any, ...]) -> base.Record:
    kind, name, data, revision, updated_at = row
    return base.Record(
        kind=kind,
        name=name,
        data=orjson.loads(data),
        revision=int(revision),
        updated_at=_from_micros(updated_at),
    )
