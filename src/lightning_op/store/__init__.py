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


def open_store(
    url: str | None = None, *, redaction: object | None = None, create: bool = True
) -> EpisodeStore:
    """Open the store a URL names (None: ``default_url()``). ``redaction`` is a ``redaction.Redactor``
    applied on every write. ``create=False`` opens an existing store only: a SQLite file that is not
    there raises ``sqlite.MissingStoreError`` (a ``StoreError``) instead of being created empty."""
    from lightning_op.store import redaction as redaction_mod

    if url is None:
        url = default_url()
    if not url.strip():
        raise StoreError("the store URL is empty: give sqlite:////path/episodes.db, or leave --store out")
    redactor = redaction if redaction is not None else redaction_mod.Redactor.default()
    assert isinstance(redactor, redaction_mod.Redactor)
    if url.startswith("sqlite://"):
        from lightning_op.store import sqlite

        return sqlite.SQLiteStore.from_url(url, redactor=redactor, create=create)
    if url.startswith("cosmos://"):
        raise StoreError(
            f"{url!r}: the Azure Cosmos DB store is not available in this build yet; "
            "use sqlite:///path/episodes.db"
        )
    raise StoreError(
        f"unsupported store URL {url!r}: use sqlite:///path/episodes.db or "
        "cosmos://account.documents.azure.com/db/container"
    )
