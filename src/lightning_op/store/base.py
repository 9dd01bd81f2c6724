"""The EpisodeStore protocol every backend implements, with its query, result and error types.

Backends: ``sqlite.py`` (embedded default) and ``cosmos.py`` (Azure Cosmos DB). The collector, the
CLI, graders' labeling and dataset building all talk to a store only through this protocol.

Besides episodes a store keeps small named *records* (datasets, training jobs, promotions) as JSON
documents with a revision, so the CLI works on one machine with no cluster and no other database.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple, Protocol, runtime_checkable

from lightning_op.api import episode as ep


class StoreError(Exception):
    """Base class of store errors; the message says what failed and what to do."""


class StoreUnavailableError(StoreError):
    """The store cannot be written or read right now (disk full, locked, network); retry later."""


class ConflictError(StoreError):
    """An optimistic-concurrency update lost: the object changed since it was read. Nothing was written."""


class NotFoundError(StoreError):
    """The episode or record does not exist."""


@dataclass(frozen=True)
class EpisodeQuery:
    """Which episodes to read. ``None`` means no filter on that field."""

    agent_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    labeled: bool | None = None
    min_reward: float | None = None
    model_version: str | None = None
    # Page size for ``query``; a cap on the total for ``iter_episodes``.
    limit: int | None = None
    # Opaque cursor from a previous ``Page.next_cursor``.
    cursor: str | None = None


@dataclass
class Page:
    items: list[ep.Episode]
    next_cursor: str | None


@dataclass
class InsertResult:
    """What a batch insert did, per id, in input order."""

    accepted: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)


@dataclass
class RewardStats:
    count: int
    labeled: int
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    last_timestamp: datetime | None = None


@dataclass
class Record:
    """A named JSON document (kind: 'dataset', 'training-job', ...) with a revision for concurrency."""

    kind: str
    name: str
    data: dict[str, Any]
    revision: int
    updated_at: datetime


@runtime_checkable
class EpisodeStore(Protocol):
    """What every store implements. A store may also implement ``BatchLabelWriter`` (``add_labels``):
    labeling at scale uses it when present and falls back to one ``add_label`` per episode.

    Stores are used from one thread at a time but not always the thread that opened them: the labeling
    pipeline runs store calls on a worker thread (``run_in_executor``) to keep the event loop free.
    """

    url: str

    def insert_many(self, episodes: Sequence[ep.Episode]) -> InsertResult:
        """Insert a batch in one transaction; ids already present are reported as duplicates, not changed."""

    def get(self, episode_id: str) -> ep.Episode | None: ...

    def query(self, q: EpisodeQuery) -> Page:
        """One page, newest first, ``q.limit`` items at most (default 100)."""

    def iter_episodes(self, q: EpisodeQuery, batch_size: int = 1000) -> Iterator[ep.Episode]:
        """Every matching episode, oldest first, in constant memory."""

    def iter_json(self, q: EpisodeQuery, batch_size: int = 5000) -> Iterator[dict[str, Any]]:
        """Like ``iter_episodes`` but yields the stored JSON dicts without model validation (fast path
        for dataset building over millions of rows). The dicts are what ``Episode.to_json_dict`` gives."""

    def add_label(self, episode_id: str, label: ep.Label, expected_revision: int | None = None) -> ep.Episode:
        """Append a label and recompute ``reward``/``labeled``; a manual label wins over automatic ones.

        With ``expected_revision`` the update fails with ``ConflictError`` if the episode changed since.
        """

    def count(self, agent_id: str | None = None, labeled: bool | None = None) -> int: ...

    def reward_stats(
        self, agent_id: str | None = None, since: datetime | None = None, model_version: str | None = None
    ) -> RewardStats: ...

    def purge_older_than(self, cutoff: datetime, agent_id: str | None = None) -> int:
        """Delete episodes with a timestamp before ``cutoff``; returns how many."""

    def agents(self) -> list[str]: ...

    def put_record(
        self, kind: str, name: str, data: dict[str, Any], expected_revision: int | None = None
    ) -> Record:
        """Create or replace a record; ``expected_revision`` 0 means 'must not exist yet'."""

    def get_record(self, kind: str, name: str) -> Record | None: ...

    def list_records(self, kind: str) -> list[Record]: ...

    def close(self) -> None: ...


class LabelUpdate(NamedTuple):
    """One label to append: ``(episode_id, label, expected_revision)``."""

    episode_id: str
    label: ep.Label
    expected_revision: int | None = None


class LabelWriteStatus(StrEnum):
    APPLIED = "applied"
    #: ``expected_revision`` did not match: nothing was written for this update
    CONFLICT = "conflict"
    NOT_FOUND = "not_found"


@runtime_checkable
class BatchLabelWriter(Protocol):
    """Optional store capability: many label appends in one transaction (labeling at scale).

    Kept out of ``EpisodeStore`` so a store without it still satisfies the protocol; callers check
    ``isinstance(store, BatchLabelWriter)`` and otherwise call ``add_label`` once per update.
    """

    def add_labels(self, updates: Sequence[LabelUpdate]) -> list[LabelWriteStatus]:
        """Apply every update in ONE transaction, each with ``add_label``'s semantics (label appended,
        ``reward``/``labeled`` recomputed, a manual label wins, revision bumped).

        An update whose ``expected_revision`` no longer matches is skipped with ``CONFLICT`` and a
        missing episode with ``NOT_FOUND``; neither fails the others. Returns one status per update, in
        input order. If it raises (``StoreUnavailableError``), nothing was written.
        """


def effective_reward(labels: Sequence[ep.Label]) -> float | None:
    """The reward an episode's labels give: the newest manual label, else the newest scored label."""
    scored = [label for label in labels if label.score is not None]
    manual = [label for label in scored if label.manual]
    chosen = (manual or scored)[-1:]
    return chosen[0].score if chosen else None


def insert_reward(episode: ep.Episode) -> float | None:
    """The reward an episode is stored with when first written: what its labels give (a manual
    label wins, as on every later label), else the reward the client sent. An episode is labeled
    exactly when this is not None, whatever the client's ``labeled`` said."""
    reward = effective_reward(episode.labels)
    return episode.reward if reward is None else reward
