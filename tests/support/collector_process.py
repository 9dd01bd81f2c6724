"""A collector run as a real process (``python -m lightning_op.cli collector``) for end-to-end tests.

It listens on ``--port 0`` and the port is read from the one log line the command prints when
listening, so parallel tests never race for a port. Everything the process writes to stderr is kept
in ``log`` (tests check it for leaked personal data and for the lifecycle lines).

``hold_write_lock`` makes the store slow on purpose: it holds a SQLite file's write lock, so the
collector's writer waits (up to the store's busy timeout) and batches stay in flight.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

import httpx

_LISTENING = re.compile(r"collector listening on (http://[^\s]+)")


class CollectorProcess:
    def __init__(
        self,
        store_url: str,
        *args: str,
        env: dict[str, str] | None = None,
        verbose: bool = False,
    ) -> None:
        self.store_url = store_url
        self.args = list(args)
        self.env = {**os.environ, **(env or {})}
        self.verbose = verbose
        self.url = ""
        self._lines: list[str] = []
        self._listening = threading.Event()
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    @property
    def proc(self) -> subprocess.Popen[str]:
        assert self._proc is not None, "collector not started"
        return self._proc

    @property
    def log(self) -> str:
        return "".join(self._lines)

    def start(self, timeout: float = 30.0) -> CollectorProcess:
        command = [sys.executable, "-m", "lightning_op.cli"]
        if self.verbose:
            command.append("-vv")
        command += ["collector", "--store", self.store_url, "--host", "127.0.0.1", "--port", "0", *self.args]
        self._proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
            cwd=Path(__file__).resolve().parents[2],
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._listening.wait(timeout) or not self.url:
            self.kill()
            raise RuntimeError(f"collector did not start within {timeout} s; its log:\n{self.log}")
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        for line in self._proc.stderr:
            self._lines.append(line)
            match = _LISTENING.search(line)
            if match and not self.url:
                self.url = match.group(1)
                self._listening.set()
        self._listening.set()

    def wait_healthy(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"collector at {self.url} not healthy after {timeout} s; its log:\n{self.log}")

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait for the exit; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._join_reader()
        return code

    def kill(self) -> None:
        """SIGKILL: no drain, no close; what the OS had when the process died is all there is."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(10)
        self._join_reader()

    def _join_reader(self) -> None:
        if self._reader is not None:
            self._reader.join(5)

    def __enter__(self) -> CollectorProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._proc is not None and self._proc.poll() is None:
            try:
                self.terminate(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


@contextmanager
def hold_write_lock(db: Path) -> Iterator[None]:
    """Hold the write lock of the SQLite file ``db`` (which must exist) until the block ends."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def metric(url: str, name: str) -> float:
    """One sample of the collector's /metrics (0 when absent)."""
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.rpartition(" ")[2])
    return 0.0


def wait_for_metric(url: str, name: str, value: float, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while metric(url, name) < value:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} did not reach {value} within {timeout} s")
        time.sleep(0.02)
