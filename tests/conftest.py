"""Fixtures shared by every test tier: a fresh SQLite store URL, free ports, the CLI runner.

Tests marked ``gpu`` are skipped where torch sees no CUDA device (CI never has one).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from lightning_op import store as store_mod
from lightning_op.store import base as store_base


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in gpu_items:
        item.add_marker(skip)


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'episodes.db'}"


@pytest.fixture
def store(store_url: str) -> Iterator[store_base.EpisodeStore]:
    s = store_mod.open_store(store_url)
    yield s
    s.close()


@pytest.fixture
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
