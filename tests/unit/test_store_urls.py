"""Opening a store from a URL: unsupported URLs get an error that says what to use instead.

Covers: a cosmos:// URL (the Cosmos DB store is not in this build) and an unknown scheme.
"""

from __future__ import annotations

import pytest

from lightning_op import store as store_mod
from lightning_op.store import base as store_base


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param(
            "cosmos://acct.documents.azure.com/db/c", "Cosmos DB store is not available", id="cosmos"
        ),
        pytest.param(
            "postgres://db/episodes", "unsupported store URL 'postgres://db/episodes'", id="unknown"
        ),
    ],
)
def test_unsupported_store_urls_say_what_to_use(url: str, expected: str) -> None:
    with pytest.raises(store_base.StoreError, match="sqlite:///") as error:
        store_mod.open_store(url)
    assert expected in str(error.value)
