"""Episode stores, opened from a URL.

``sqlite:///path/episodes.db`` (embedded default) or
``cosmos://account.documents.azure.com/db/container`` (Azure Cosmos DB). ``default_url()`` is the
CLI's default: a SQLite file under the user's data directory, or ``$LIGHTNING_STORE``.
"""

from __future__ import annotations

import os
from pathlib import Path

from lightning_op.api import constants
from lightning_op.store.base import EpisodeStore, StoreError


def default_url() -> str:
    env = os.environ.get(constants.ENV_STORE)
    if env:
        return env
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return f"sqlite:///{base / 'lightning-op' / 'episodes.db'}"


def open_store(url: str | None = None, *, redaction: object | None = None) -> EpisodeStore:
    """Open the store a URL names. ``redaction`` is a ``redaction.Redactor`` applied on every write."""
    from lightning_op.store import redaction as redaction_mod

    url = url or default_url()
    redactor = redaction if redaction is not None else redaction_mod.Redactor.default()
    assert isinstance(redactor, redaction_mod.Redactor)
    if url.startswith("sqlite://"):
        from lightning_op.store import sqlite

        return sqlite.SQLiteStore.from_url(url, redactor=redactor)
    if url.startswith("cosmos://"):
        raise StoreError(
            f"{url!r}: the Azure Cosmos DB store is not available in this build yet; "
            "use sqlite:///path/episodes.db"
        )
    raise StoreError(
        f"unsupported store URL {url!r}: use sqlite:///path/episodes.db or "
        "cosmos://account.documents.azure.com/db/container"
    )
